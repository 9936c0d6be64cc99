//! The decoder block's fused steps — `linear_add`, `gated_linear`, `mlp`, `norm_linear_many`,
//! `rope_write_kv` — against f64 references of what they fuse, so that a backend's fused
//! kernels meet the same bounds as the separate ops.

use super::{
    act, attention_tol, dequantized, linear_tol, qkv_error, r, random_weight, record, vector,
    weight,
};
use super::{Report, Rng};
use crate::{
    AttnMeta, AttnSeq, Backend, BackendError, KvDType, KvSpec, MlpScratch, RopeParams, RopeStyle,
    WeightRole,
};
use suanli_core::DType;

/// Decode (1 row), a small batch (5) and a larger one (17: a GPU's GEMM path for float weights,
/// launches of 8 rows of the matrix-vector kernels for quantized ones).
const ROWS: [usize; 3] = [1, 5, 17];
/// Rows besides for the gated MLP's steps: a batched path (the CPU's AMX tiles from 32 tokens:
/// two tiles of 16 and 9 tokens after them).
const BATCHED: usize = 41;

/// acc + x · wᵀ against the f64 product, relative to ‖w_r‖·‖x_t‖ as for `linear`.
pub fn check_linear_add<B: Backend>(b: &B, ty: DType, rng: &mut Rng, rep: &mut Report) {
    let (rows, cols) = (64, 1024);
    for n in ROWS {
        let bytes = random_weight(ty, rows, cols, rng);
        let wf = dequantized(ty, &bytes, rows, cols);
        let x = rng.normals(n * cols, 1.0);
        let acc0 = rng.normals(n * rows, 4.0);
        let got = (|| {
            let w = weight(b, "o_proj", ty, rows, cols, WeightRole::Matrix, bytes)?;
            let xa = act(b, &x, n, cols)?;
            let mut tmp = b.alloc_act(n, rows)?;
            let mut acc = act(b, &acc0, n, rows)?;
            b.linear_add(&xa, &w, &mut tmp, &mut acc)?;
            // What the product added (the subtraction is exact to ~1e-7 of |acc|, far below the
            // tolerance's scale).
            let added: Vec<f32> = b
                .download(&acc)?
                .iter()
                .zip(&acc0)
                .map(|(g, a)| g - a)
                .collect();
            Ok(r::linear_error(&x, &wf, None, rows, cols, &added))
        })();
        let case = format!("{ty} {n}x{cols} · [{rows},{cols}] added to the input");
        record(rep, "linear_add", case, linear_tol(b, ty), got);
    }
}

/// silu(x · gateᵀ) · (x · upᵀ) against f64, each output's error divided by how far the two
/// products' own error bounds (‖w_r‖·‖x_t‖ each, as for `linear`) can move it:
/// |silu'(g)|·|u|·‖gate_r‖‖x‖ + |silu(g)|·‖up_r‖‖x‖, with |silu'| ≤ 1.1.
pub fn check_gated_linear<B: Backend>(b: &B, ty: DType, rng: &mut Rng, rep: &mut Report) {
    let (rows, cols) = (64, 1024);
    let norm = |v: &[f32]| v.iter().map(|&a| (a as f64).powi(2)).sum::<f64>().sqrt();
    let dot =
        |a: &[f32], b: &[f32]| -> f64 { a.iter().zip(b).map(|(&p, &q)| p as f64 * q as f64).sum() };
    let silu = |g: f64| g / (1.0 + (-g).exp());
    for n in ROWS.into_iter().chain([BATCHED]) {
        let (gb, ub) = (
            random_weight(ty, rows, cols, rng),
            random_weight(ty, rows, cols, rng),
        );
        let (gf, uf) = (
            dequantized(ty, &gb, rows, cols),
            dequantized(ty, &ub, rows, cols),
        );
        let x = rng.normals(n * cols, 0.2);
        let got = (|| {
            let gate = weight(b, "gate", ty, rows, cols, WeightRole::Matrix, gb)?;
            let up = weight(b, "up", ty, rows, cols, WeightRole::Matrix, ub)?;
            let xa = act(b, &x, n, cols)?;
            let (mut g, mut u, mut out) = (
                b.alloc_act(n, rows)?,
                b.alloc_act(n, rows)?,
                b.alloc_act(n, rows)?,
            );
            b.gated_linear(&xa, &gate, &up, &mut g, &mut u, &mut out)?;
            let got = b.download(&out)?;
            if got.len() != n * rows {
                return Ok(f64::INFINITY);
            }
            let mut worst = 0f64;
            for t in 0..n {
                let xt = &x[t * cols..][..cols];
                for r in 0..rows {
                    let (gr, ur) = (&gf[r * cols..][..cols], &uf[r * cols..][..cols]);
                    let (gv, uv) = (dot(gr, xt), dot(ur, xt));
                    let want = silu(gv) * uv;
                    let bound =
                        1.1 * uv.abs() * norm(gr) * norm(xt) + silu(gv).abs() * norm(ur) * norm(xt);
                    let e = (got[t * rows + r] as f64 - want).abs() / bound.max(1e-30);
                    worst = worst.max(if e.is_nan() { f64::INFINITY } else { e });
                }
            }
            Ok(worst)
        })();
        let case = format!("{ty} {n}x{cols} · gate, up [{rows},{cols}]");
        record(rep, "gated_linear", case, linear_tol(b, ty), got);
    }
}

/// The MLP block, x + down · (silu(n · gateᵀ) ⊙ (n · upᵀ)) with n = rms_norm(x), against f64.
/// Output r's error is divided by ‖down_r‖ · (‖h‖ + ‖hb‖), h the f64 middle and hb its
/// elements' bounds as in `check_gated_linear`: what the down product's own bound and the
/// middle's error can give. Also against the backend's own separate ops (rms_norm,
/// gated_linear, linear_add): a fused path that dropped a step could stay under that loose bound
/// but not near its own definition.
pub fn check_mlp<B: Backend>(b: &B, ty: DType, rng: &mut Rng, rep: &mut Report) {
    let (hidden, ff, eps) = (256, 512, 1e-6f32);
    let norm = |v: &[f32]| v.iter().map(|&a| (a as f64).powi(2)).sum::<f64>().sqrt();
    let dot =
        |a: &[f32], b: &[f32]| -> f64 { a.iter().zip(b).map(|(&p, &q)| p as f64 * q as f64).sum() };
    let silu = |g: f64| g / (1.0 + (-g).exp());
    for n in ROWS.into_iter().chain([BATCHED]) {
        let (gb, ub, db) = (
            random_weight(ty, ff, hidden, rng),
            random_weight(ty, ff, hidden, rng),
            random_weight(ty, hidden, ff, rng),
        );
        let (gf, uf, df) = (
            dequantized(ty, &gb, ff, hidden),
            dequantized(ty, &ub, ff, hidden),
            dequantized(ty, &db, hidden, ff),
        );
        let nw = rng.normals(hidden, 0.3);
        let x0 = rng.normals(n * hidden, 4.0);
        let nx = r::rms_norm(&x0, &nw, hidden, eps);
        let mut own = f64::INFINITY;
        let got = (|| {
            let gate = weight(b, "gate", ty, ff, hidden, WeightRole::Matrix, gb)?;
            let up = weight(b, "up", ty, ff, hidden, WeightRole::Matrix, ub)?;
            let down = weight(b, "down", ty, hidden, ff, WeightRole::Matrix, db)?;
            let nwt = vector(b, "norm", &nw)?;
            let (mut h, mut g, mut u, mut a, mut o) = (
                b.alloc_act(n, hidden)?,
                b.alloc_act(n, ff)?,
                b.alloc_act(n, ff)?,
                b.alloc_act(n, ff)?,
                b.alloc_act(n, hidden)?,
            );
            let mut x = act(b, &x0, n, hidden)?;
            let s = MlpScratch {
                normed: &mut h,
                g: &mut g,
                u: &mut u,
                act: &mut a,
                out: &mut o,
            };
            b.mlp(&mut x, (&nwt, eps), [&gate, &up, &down], s)?;
            let got = b.download(&x)?;
            if got.len() != n * hidden {
                return Ok(f64::INFINITY);
            }
            let mut x2 = act(b, &x0, n, hidden)?;
            b.rms_norm(&x2, &nwt, eps, &mut h)?;
            b.gated_linear(&h, &gate, &up, &mut g, &mut u, &mut a)?;
            b.linear_add(&a, &down, &mut o, &mut x2)?;
            let added = |v: &[f32]| -> Vec<f32> { v.iter().zip(&x0).map(|(g, a)| g - a).collect() };
            own = r::rel_max_error(&added(&got), &added(&b.download(&x2)?));
            let mut worst = 0f64;
            for t in 0..n {
                let xt = &nx[t * hidden..][..hidden];
                let (mut h, mut hb) = (vec![0f64; ff], vec![0f64; ff]);
                for i in 0..ff {
                    let (gr, ur) = (&gf[i * hidden..][..hidden], &uf[i * hidden..][..hidden]);
                    let (gv, uv) = (dot(gr, xt), dot(ur, xt));
                    h[i] = silu(gv) * uv;
                    hb[i] = (1.1 * uv.abs() * norm(gr) + silu(gv).abs() * norm(ur)) * norm(xt);
                }
                let l2 = |v: &[f64]| v.iter().map(|a| a * a).sum::<f64>().sqrt();
                let scale = l2(&h) + l2(&hb);
                for r in 0..hidden {
                    let dr = &df[r * ff..][..ff];
                    let want: f64 = dr.iter().zip(&h).map(|(&d, &v)| d as f64 * v).sum();
                    let added = got[t * hidden + r] as f64 - x0[t * hidden + r] as f64;
                    let e = (added - want).abs() / (norm(dr) * scale).max(1e-30);
                    worst = worst.max(if e.is_nan() { f64::INFINITY } else { e });
                }
            }
            Ok(worst)
        })();
        let case = format!("{ty} {n}x{hidden} · gate, up [{ff},{hidden}], down [{hidden},{ff}]");
        let ok = got.is_ok();
        record(rep, "mlp", case.clone(), linear_tol(b, ty), got);
        if ok {
            // A bf16 middle (2^-9 relative) against f32 products: 1e-2 of the largest output.
            record(
                rep,
                "mlp",
                format!("{case}, vs its separate ops"),
                1e-2,
                Ok(own),
            );
        }
    }
}

/// Q/K/V-like products (128, 32, 32 rows, biases) of rms_norm(x) against the f64 products of
/// the f64-normed rows, relative to ‖w_r‖·‖n_t‖ as for `linear`.
pub fn check_norm_linear_many<B: Backend>(b: &B, ty: DType, rng: &mut Rng, rep: &mut Report) {
    let (cols, eps) = (512, 1e-6f32);
    for n in ROWS {
        let x = rng.normals(n * cols, 3.0);
        let nw = rng.normals(cols, 1.0);
        let got = norm_qkv_error(b, [ty; 3], &x, &nw, eps, cols, rng);
        let case = format!("{ty} rms_norm({n}x{cols}) · q/k/v 128,32,32 + bias");
        record(rep, "norm_linear_many", case, linear_tol(b, ty), got);
    }
}

/// `norm_linear_many` of n rows of x by `nw` into Q/K/V-like products of `types`.
fn norm_qkv_error<B: Backend>(
    b: &B,
    types: [DType; 3],
    x: &[f32],
    nw: &[f32],
    eps: f32,
    cols: usize,
    rng: &mut Rng,
) -> Result<f64, BackendError> {
    let nx = r::rms_norm(x, nw, cols, eps);
    qkv_error(b, types, x, &nx, cols, rng, |xa, ws, outs| {
        let norm = vector(b, "norm", nw)?;
        let mut h = b.alloc_act(xa.rows, cols)?;
        b.norm_linear_many(xa, (&norm, eps), ws, outs, &mut h)
    })
}

/// Q and K of one type and V of another, as real files have them (Q4_K_M gives V Q6_K;
/// Qwen2.5-Coder-0.5B's Q5_0/Q8_0): `norm_linear_many` and `linear_many`, for every pair of
/// the backend's quantized types that such files use.
pub fn check_mixed_qkv<B: Backend>(b: &B, rng: &mut Rng, rep: &mut Report) {
    let (cols, eps) = (512, 1e-6f32);
    let pairs = [(DType::Q5_0, DType::Q8_0), (DType::Q4K, DType::Q6K)];
    for (qk, v) in pairs {
        let types = [qk, qk, v];
        if !types.iter().all(|t| b.caps().weight_dtypes.contains(t)) {
            continue;
        }
        let tol = linear_tol(b, qk).max(linear_tol(b, v));
        for n in ROWS {
            let x = rng.normals(n * cols, 3.0);
            let nw = rng.normals(cols, 1.0);
            let got = norm_qkv_error(b, types, &x, &nw, eps, cols, rng);
            let case = format!("{qk}, {qk}, {v} rms_norm({n}x{cols}) · q/k/v 128,32,32 + bias");
            record(rep, "norm_linear_many", case, tol, got);
            let got = qkv_error(b, types, &x, &x, cols, rng, |xa, ws, outs| {
                b.linear_many(xa, ws, outs)
            });
            let case = format!("{qk}, {qk}, {v} {n}x{cols} · q/k/v 128,32,32 + bias");
            record(rep, "linear_many", case, tol, got);
        }
    }
}

/// q and k rotated in place as `rope` rotates them, and k, v in the cache as `write_kv` leaves
/// them — seen through `attention` over the written cache against f64 attention over rotated,
/// cache-rounded keys. Rows in shuffled slots, GQA 8/2.
pub fn check_rope_write_kv<B: Backend>(b: &B, kvt: KvDType, rng: &mut Rng, rep: &mut Report) {
    let (n_heads, n_kv, bs, n): (usize, usize, usize, usize) = (8, 2, 16, 20);
    for (style, hd, rot) in [(RopeStyle::Neox, 64, 64), (RopeStyle::Interleaved, 128, 64)] {
        let rq = RopeParams::new(n_heads, hd, rot, 10_000.0, style);
        let rk = RopeParams {
            n_heads: n_kv,
            ..rq.clone()
        };
        let kv_dim = n_kv * hd;
        let spec = KvSpec {
            dtype: kvt,
            n_layers: 2,
            num_blocks: 6,
            block_size: bs,
            n_kv_heads: n_kv,
            head_dim: hd,
        };
        let mut table: Vec<u32> = (0..spec.num_blocks as u32).collect();
        rng.shuffle(&mut table);
        table.truncate(n.div_ceil(bs));
        let positions: Vec<u32> = (0..n as u32).collect();
        let slots: Vec<u32> = positions
            .iter()
            .map(|&p| table[p as usize / bs] * bs as u32 + p % bs as u32)
            .collect();
        let (q, k, v) = (
            rng.normals(n * n_heads * hd, 1.0),
            rng.normals(n * kv_dim, 1.0),
            rng.normals(n * kv_dim, 1.0),
        );
        let (q_rot, k_rot) = (r::rope(&q, &positions, &rq), r::rope(&k, &positions, &rk));
        let scale = 1.0 / (hd as f32).sqrt();
        let mut rotated = f64::INFINITY;
        let got = (|| {
            let mut kv = b.alloc_kv(spec)?;
            let (mut qa, mut ka, va) = (
                act(b, &q, n, n_heads * hd)?,
                act(b, &k, n, kv_dim)?,
                act(b, &v, n, kv_dim)?,
            );
            b.rope_write_kv(
                &mut qa,
                &mut ka,
                &va,
                &positions,
                (&rq, &rk),
                &slots,
                &mut kv,
                1,
            )?;
            rotated = r::rel_max_error(&b.download(&qa)?, &q_rot)
                .max(r::rel_max_error(&b.download(&ka)?, &k_rot));
            let seqs = [AttnSeq {
                q_start: 0,
                q_len: n,
                ctx_len: n,
                block_table: table.clone(),
                generated_from: usize::MAX,
            }];
            let meta = AttnMeta {
                seqs: &seqs,
                n_heads,
                n_kv_heads: n_kv,
                head_dim: hd,
                scale,
                window: None,
            };
            let mut out = b.alloc_act(n, n_heads * hd)?;
            b.attention(&qa, &kv, &meta, 1, &mut out)?;
            let (kr, vr) = (r::kv_round(&k_rot, kvt, hd), r::kv_round(&v, kvt, hd));
            let want = r::attention(&q_rot, &kr, &vr, n, n_heads, n_kv, hd, scale, None);
            Ok(r::max_abs_diff(&b.download(&out)?, &want))
        })();
        let case = format!("{kvt:?} cache, {style:?} head {hd} rotary {rot}");
        let ok = got.as_ref().is_ok();
        record(
            rep,
            "rope_write_kv",
            format!("{case}, through attention"),
            attention_tol(kvt),
            got,
        );
        if ok {
            record(
                rep,
                "rope_write_kv",
                format!("{case}, q and k"),
                1e-5,
                Ok(rotated),
            );
        }
    }
}
