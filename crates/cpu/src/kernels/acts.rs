//! Quantized activations in the layout the AVX-512 kernels read: per token, `k` unsigned bytes
//! (`q + 128`), and the block scales (replicated per dpbusd lane for 32-element blocks).

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

impl QActs {
    pub fn fill_q8(&mut self, blocks: &[BlockQ8], k: usize) {
        self.k = k;
        self.qs.clear();
        self.nls.clear();
        self.dl.clear();
        self.s.clear();
        for b in blocks {
            self.push_quants(&b.qs);
            self.dl.extend_from_slice(&[b.d; 8]);
            self.s.push(b.s);
        }
    }

    pub fn fill_q8k(&mut self, blocks: &[BlockQ8K], k: usize) {
        self.k = k;
        self.qs.clear();
        self.nls.clear();
        self.dk.clear();
        self.bsums.clear();
        for b in blocks {
            self.push_quants(&b.qs);
            self.dk.push(b.d);
            self.bsums.extend_from_slice(&b.bsums);
        }
    }

    fn push_quants(&mut self, q: &[i8]) {
        self.qs.extend_from_slice(q);
        self.nls.extend(
            q.chunks_exact(4)
                .map(|c| -(c.iter().map(|&v| v as i32).sum::<i32>())),
        );
    }
}
