//! Activations for the packed-weight kernels: each token quantized in blocks of 32 as llama.cpp's
//! Q8_1 (`core::quant::q8`), the quants in one array and each block's numbers in another, so the
//! kernels broadcast 4 quants at a time and read one 16-byte record per block.

use crate::pool::Pool;
use suanli_core::quant::q8::{quantize_q8, BlockQ8};

/// Per 32-element block of one token.
#[derive(Clone, Copy, Default)]
#[repr(C)]
pub struct Meta {
    /// Scale: x ≈ d · q.
    pub d: f32,
    /// d · Σq (what a float min multiplies).
    pub s: f32,
    /// −Σq over the block.
    pub nsum32: i32,
    /// −Σq over each half (Q6_K's 16-element sub-blocks).
    pub nsum16: [i16; 2],
}

#[derive(Default)]
pub struct PActs {
    /// Elements per token (a multiple of 32).
    pub k: usize,
    pub n: usize,
    /// `[n, k]`
    pub qs: Vec<i8>,
    /// `[n, k / 32]`
    pub meta: Vec<Meta>,
}

/// Tokens per thread below which quantizing is left to the calling thread.
const SERIAL_BELOW: usize = 4;

fn quantize_token(x: &[f32], qs: &mut [i8], meta: &mut [Meta]) {
    let mut b = [BlockQ8::default()];
    for ((xb, qb), m) in x.chunks_exact(32).zip(qs.chunks_exact_mut(32)).zip(meta) {
        quantize_q8(xb, false, &mut b);
        qb.copy_from_slice(&b[0].qs);
        let half = |h: usize| {
            -(b[0].qs[h * 16..h * 16 + 16]
                .iter()
                .map(|&v| v as i32)
                .sum::<i32>())
        };
        let (h0, h1) = (half(0), half(1));
        *m = Meta {
            d: b[0].d,
            // In f32 (llama.cpp rounds it to f16; exact is better and costs nothing here).
            s: b[0].d * -(h0 + h1) as f32,
            nsum32: h0 + h1,
            // |Σ of 16 i8| ≤ 2048: fits.
            nsum16: [h0 as i16, h1 as i16],
        };
    }
}

impl PActs {
    /// Quantize `n` tokens of `k` elements (`x` is `[n, k]`); batches are spread over the threads.
    pub fn fill(&mut self, pool: &Pool, x: &[f32], n: usize, k: usize) {
        debug_assert!(k % 32 == 0 && x.len() == n * k);
        self.k = k;
        self.n = n;
        self.qs.resize(n * k, 0);
        self.meta.resize(n * k / 32, Meta::default());
        if n < SERIAL_BELOW * pool.threads() {
            for ((xt, qt), mt) in x
                .chunks_exact(k)
                .zip(self.qs.chunks_exact_mut(k))
                .zip(self.meta.chunks_exact_mut(k / 32))
            {
                quantize_token(xt, qt, mt);
            }
            return;
        }
        let mut parts: Vec<(&mut [i8], &mut [Meta])> = self
            .qs
            .chunks_exact_mut(k)
            .zip(self.meta.chunks_exact_mut(k / 32))
            .collect();
        pool.split_mut(&mut parts, 1, 2, &|t0, chunk| {
            for (i, (qt, mt)) in chunk.iter_mut().enumerate() {
                let t = t0 + i;
                quantize_token(&x[t * k..(t + 1) * k], qt, mt);
            }
        });
    }
}
