//! out[t, r] = dot(x[t], w[r]) (+ bias[r]) over weights in any stored format.

use crate::kernels::Kernels;
use crate::CpuWeight;
use rayon::prelude::*;
use std::cell::RefCell;
use suanli_backend::Weight;

thread_local! {
    /// Per-thread rows of dequantized weights, reused across calls.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Rows of the weight dequantized together in the batched path (kept in L1/L2 while the tokens stream).
const ROW_TILE: usize = 8;

fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < len {
            s.resize(len, 0.0);
        }
        f(&mut s[..len])
    })
}

/// `x` is `[n, w.cols]`, `out` is `[n, w.rows]`.
pub fn matmul(k: &Kernels, x: &[f32], n: usize, w: &Weight<CpuWeight>, bias: Option<&[f32]>, out: &mut [f32]) {
    let (m, kd) = (w.rows, w.cols);
    if n == 0 || m == 0 {
        return;
    }
    let threads = rayon::current_num_threads().max(1);
    if n == 1 {
        // Decode: split the weight rows across threads.
        let chunk = (m / (threads * 8)).clamp(16, 512);
        out.par_chunks_mut(chunk).enumerate().for_each(|(ci, oc)| {
            with_scratch(kd, |s| {
                for (j, o) in oc.iter_mut().enumerate() {
                    let r = ci * chunk + j;
                    let row = w.store.row(w, r, s);
                    *o = (k.dot)(row, x) + bias.map_or(0.0, |b| b[r]);
                }
            })
        });
        return;
    }
    // Batches: split the tokens across threads; each thread walks all weight rows in tiles.
    let per = n.div_ceil(threads);
    out.par_chunks_mut(per * m).enumerate().for_each(|(ci, oc)| {
        let t0 = ci * per;
        let nt = oc.len() / m;
        with_scratch(kd * ROW_TILE, |s| {
            let mut r0 = 0;
            while r0 < m {
                let rt = ROW_TILE.min(m - r0);
                for j in 0..rt {
                    w.store.row_into(w, r0 + j, &mut s[j * kd..(j + 1) * kd]);
                }
                for t in 0..nt {
                    let xt = &x[(t0 + t) * kd..(t0 + t + 1) * kd];
                    for j in 0..rt {
                        let r = r0 + j;
                        oc[t * m + r] = (k.dot)(&s[j * kd..(j + 1) * kd], xt) + bias.map_or(0.0, |b| b[r]);
                    }
                }
                r0 += rt;
            }
        })
    });
}
