//! Quantized activations in the layout the AVX-512 kernels read: per token, `k` signed bytes,
//! minus the sum of each 4-byte lane (so a weight offset such as Q4_0's −8 becomes the starting
//! value of the `vpdpbusd` accumulator), and the block scales (replicated per lane for 32-blocks).

use crate::pool::Pool;
use suanli_core::quant::q8::{BlockQ8, BlockQ8K};

#[derive(Default)]
pub struct QActs {
    /// Elements per token.
    pub k: usize,
    /// `[n, k]` quants.
    pub qs: Vec<i8>,
    /// `[n, k / 4]`: −(sum of each 4 consecutive quants).
    pub nls: Vec<i32>,
    /// Q8_0/Q8_1: each block's scale, 8 times (one per 4-byte lane) — `[n, k / 4]`.
    pub dl: Vec<f32>,
    /// Q8_1: `d · Σq` per block — `[n, k / 32]`.
    pub s: Vec<f32>,
    /// Q8_K: scale per 256 — `[n, k / 256]`.
    pub dk: Vec<f32>,
    /// Q8_K: sums of 16 — `[n, k / 16]`.
    pub bsums: Vec<i16>,
}

/// One token's share of the arrays, filled independently of the others.
struct TokenParts<'a> {
    qs: &'a mut [i8],
    nls: &'a mut [i32],
    /// `dl` (Q8_0/Q8_1) or `dk` (Q8_K).
    d: &'a mut [f32],
    /// `s` (Q8_0/Q8_1) or unused.
    s: &'a mut [f32],
    bsums: &'a mut [i16],
}

/// Batches smaller than this are laid out on the calling thread (no per-token bookkeeping).
const SERIAL_BELOW: usize = 8;

fn neg_lane_sums(q: &[i8], out: &mut [i32]) {
    for (o, c) in out.iter_mut().zip(q.chunks_exact(4)) {
        *o = -(c.iter().map(|&v| v as i32).sum::<i32>());
    }
}

impl QActs {
    /// Lay out Q8_0/Q8_1 blocks of `n` tokens of `k` elements (batches filled across threads).
    pub fn fill_q8(&mut self, pool: &Pool, blocks: &[BlockQ8], k: usize) {
        let n = blocks.len() * 32 / k;
        self.k = k;
        self.qs.resize(n * k, 0);
        self.nls.resize(n * k / 4, 0);
        self.dl.resize(n * k / 4, 0.0);
        self.s.resize(n * k / 32, 0.0);
        if n < SERIAL_BELOW {
            for (i, b) in blocks.iter().enumerate() {
                self.qs[i * 32..i * 32 + 32].copy_from_slice(&b.qs);
                neg_lane_sums(&b.qs, &mut self.nls[i * 8..i * 8 + 8]);
                self.dl[i * 8..i * 8 + 8].fill(b.d);
                self.s[i] = b.s;
            }
            return;
        }
        let mut parts: Vec<(TokenParts<'_>, &[BlockQ8])> = self
            .qs
            .chunks_mut(k)
            .zip(self.nls.chunks_mut(k / 4))
            .zip(self.dl.chunks_mut(k / 4))
            .zip(self.s.chunks_mut(k / 32))
            .zip(blocks.chunks(k / 32))
            .map(|((((qs, nls), d), s), b)| {
                (
                    TokenParts {
                        qs,
                        nls,
                        d,
                        s,
                        bsums: &mut [],
                    },
                    b,
                )
            })
            .collect();
        for_tokens(pool, &mut parts, &|p, blocks| {
            for (i, b) in blocks.iter().enumerate() {
                p.qs[i * 32..i * 32 + 32].copy_from_slice(&b.qs);
                neg_lane_sums(&b.qs, &mut p.nls[i * 8..i * 8 + 8]);
                p.d[i * 8..i * 8 + 8].fill(b.d);
                p.s[i] = b.s;
            }
        });
    }

    /// Lay out Q8_K blocks of `n` tokens of `k` elements.
    pub fn fill_q8k(&mut self, pool: &Pool, blocks: &[BlockQ8K], k: usize) {
        let n = blocks.len() * 256 / k;
        self.k = k;
        self.qs.resize(n * k, 0);
        self.nls.resize(n * k / 4, 0);
        self.dk.resize(n * k / 256, 0.0);
        self.bsums.resize(n * k / 16, 0);
        if n < SERIAL_BELOW {
            for (i, b) in blocks.iter().enumerate() {
                self.qs[i * 256..i * 256 + 256].copy_from_slice(&b.qs);
                neg_lane_sums(&b.qs, &mut self.nls[i * 64..i * 64 + 64]);
                self.dk[i] = b.d;
                self.bsums[i * 16..i * 16 + 16].copy_from_slice(&b.bsums);
            }
            return;
        }
        let mut parts: Vec<(TokenParts<'_>, &[BlockQ8K])> = self
            .qs
            .chunks_mut(k)
            .zip(self.nls.chunks_mut(k / 4))
            .zip(self.dk.chunks_mut(k / 256))
            .zip(self.bsums.chunks_mut(k / 16))
            .zip(blocks.chunks(k / 256))
            .map(|((((qs, nls), d), bsums), b)| {
                (
                    TokenParts {
                        qs,
                        nls,
                        d,
                        s: &mut [],
                        bsums,
                    },
                    b,
                )
            })
            .collect();
        for_tokens(pool, &mut parts, &|p, blocks| {
            for (i, b) in blocks.iter().enumerate() {
                p.qs[i * 256..i * 256 + 256].copy_from_slice(&b.qs);
                neg_lane_sums(&b.qs, &mut p.nls[i * 64..i * 64 + 64]);
                p.d[i] = b.d;
                p.bsums[i * 16..i * 16 + 16].copy_from_slice(&b.bsums);
            }
        });
    }
}

/// Fill each token's parts; a batch is spread over the threads.
fn for_tokens<B: Sync>(
    pool: &Pool,
    parts: &mut [(TokenParts<'_>, &[B])],
    f: &(dyn Fn(&mut TokenParts<'_>, &[B]) + Sync),
) {
    pool.split_mut(parts, 1, 1, &|_, chunk| {
        for (p, b) in chunk.iter_mut() {
            f(p, b);
        }
    });
}
