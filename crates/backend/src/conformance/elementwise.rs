//! Element-wise ops (`silu_mul`, `add`, `gelu_mul`, `scale`) and the experts' row gather and
//! weighted scatter, against f64 or exact references.

use super::{act, r, record, Report, Rng};
use crate::Backend;

pub(super) fn check_elementwise<B: Backend>(b: &B, rng: &mut Rng, rep: &mut Report) {
    let (n, cols) = (7, 1000);
    let g = rng.normals(n * cols, 4.0);
    let u = rng.normals(n * cols, 1.0);
    let got = (|| {
        let (ga, ua) = (act(b, &g, n, cols)?, act(b, &u, n, cols)?);
        let mut out = b.alloc_act(n, cols)?;
        b.silu_mul(&ga, &ua, &mut out)?;
        let want: Vec<f32> = g
            .iter()
            .zip(&u)
            .map(|(&a, &b)| (a as f64 / (1.0 + (-a as f64).exp()) * b as f64) as f32)
            .collect();
        Ok(r::rel_max_error(&b.download(&out)?, &want))
    })();
    record(rep, "silu_mul", format!("{n}x{cols}"), 1e-5, got);
    let got = (|| {
        let mut acc = act(b, &g, n, cols)?;
        let xa = act(b, &u, n, cols)?;
        b.add(&mut acc, &xa)?;
        let want: Vec<f32> = g.iter().zip(&u).map(|(a, b)| a + b).collect();
        Ok(r::max_abs_diff(&b.download(&acc)?, &want))
    })();
    record(rep, "add", format!("{n}x{cols}"), 0.0, got);
    if !b.caps().gelu_and_scale {
        return;
    }
    let got = (|| {
        let (ga, ua) = (act(b, &g, n, cols)?, act(b, &u, n, cols)?);
        let mut out = b.alloc_act(n, cols)?;
        b.gelu_mul(&ga, &ua, &mut out)?;
        let c = (2.0 / std::f64::consts::PI).sqrt();
        let want: Vec<f32> = g
            .iter()
            .zip(&u)
            .map(|(&a, &b)| {
                let x = a as f64;
                (0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh()) * b as f64) as f32
            })
            .collect();
        Ok(r::rel_max_error(&b.download(&out)?, &want))
    })();
    record(rep, "gelu_mul", format!("{n}x{cols}"), 1e-5, got);
    let got = (|| {
        let mut x = act(b, &g, n, cols)?;
        b.scale(&mut x, 25.3)?;
        let want: Vec<f32> = g.iter().map(|a| a * 25.3).collect();
        Ok(r::max_abs_diff(&b.download(&x)?, &want))
    })();
    record(rep, "scale", format!("{n}x{cols}"), 0.0, got);
}

/// The experts' gather and weighted scatter: rows picked out of order and repeated, added back
/// in order (a token routed to several experts), into live rows only.
pub(super) fn check_expert_rows<B: Backend>(b: &B, rng: &mut Rng, rep: &mut Report) {
    let (n, cols) = (9, 300);
    let x = rng.normals(n * cols, 1.0);
    let rows: [u32; 6] = [7, 0, 3, 3, 8, 1];
    let weights: Vec<f32> = rng.normals(rows.len(), 1.0);
    let picked: Vec<f32> = rows
        .iter()
        .flat_map(|&r| {
            x[r as usize * cols..(r as usize + 1) * cols]
                .iter()
                .copied()
        })
        .collect();
    let got = (|| {
        let xa = act(b, &x, n, cols)?;
        let mut out = b.alloc_act(rows.len(), cols)?;
        b.gather_rows(&xa, &rows, &mut out)?;
        Ok(r::max_abs_diff(&b.download(&out)?, &picked))
    })();
    record(rep, "gather_rows", format!("6 of {n}x{cols}"), 0.0, got);
    let got = (|| {
        let mut acc = act(b, &x, n, cols)?;
        let pa = act(b, &picked, rows.len(), cols)?;
        b.add_rows_scaled(&mut acc, &pa, &rows, &weights)?;
        let mut want = x.clone();
        for (i, (&r, &w)) in rows.iter().zip(&weights).enumerate() {
            for c in 0..cols {
                want[r as usize * cols + c] += w * picked[i * cols + c];
            }
        }
        if b.add_rows_scaled(&mut acc, &pa, &[0, 1, 2, 3, 4, 9], &weights)
            .is_ok()
        {
            return Err(crate::shape_err("add_rows_scaled", "row 9 of 9 accepted"));
        }
        Ok(r::max_abs_diff(&b.download(&acc)?, &want))
    })();
    record(
        rep,
        "add_rows_scaled",
        format!("6 into {n}x{cols}"),
        0.0,
        got,
    );
}
