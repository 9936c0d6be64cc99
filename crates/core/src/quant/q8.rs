//! Activation quantization, as llama.cpp does it before integer dot products: Q8_0/Q8_1 blocks of
//! 32 (scale rounded through f16) for the legacy formats, Q8_K blocks of 256 for the K-quants.
//! Using the same activation formats as llama.cpp makes our logits agree with it closely.

use crate::DType;
use half::f16;

/// 32 activations: `x ≈ d * qs`; `s = d * Σ qs` (used by Q4_1/Q5_1, whose blocks carry a min).
#[derive(Clone, Copy, Debug)]
pub struct BlockQ8 {
    pub d: f32,
    pub s: f32,
    pub qs: [i8; 32],
}

/// 256 activations: `x ≈ d * qs`, with the sums of each group of 16 quants.
#[derive(Clone, Copy, Debug)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; 256],
    pub bsums: [i16; 16],
}

impl Default for BlockQ8 {
    fn default() -> Self {
        BlockQ8 {
            d: 0.0,
            s: 0.0,
            qs: [0; 32],
        }
    }
}

impl Default for BlockQ8K {
    fn default() -> Self {
        BlockQ8K {
            d: 0.0,
            qs: [0; 256],
            bsums: [0; 16],
        }
    }
}

/// Which activation format a weight type's dot product takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActFormat {
    F32,
    Q8_0,
    Q8_1,
    Q8K,
}

pub fn act_format(w: DType) -> ActFormat {
    match w {
        DType::F32 | DType::F16 | DType::BF16 => ActFormat::F32,
        DType::Q4_0 | DType::Q5_0 | DType::Q8_0 | DType::IQ4NL => ActFormat::Q8_0,
        DType::Q4_1 | DType::Q5_1 => ActFormat::Q8_1,
        DType::Q2K | DType::Q3K | DType::Q4K | DType::Q5K | DType::Q6K | DType::IQ4XS => {
            ActFormat::Q8K
        }
    }
}

#[inline]
pub fn round_f16(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

/// `x.len()` must be a multiple of 32.
pub fn quantize_q8(x: &[f32], with_sum: bool, out: &mut [BlockQ8]) {
    for (b, o) in x.chunks_exact(32).zip(out.iter_mut()) {
        let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (q, v) in o.qs.iter_mut().zip(b) {
            // roundf: half away from zero, as ggml's reference.
            *q = (v * id).round() as i8;
            sum += *q as i32;
        }
        o.d = round_f16(d);
        o.s = if with_sum {
            round_f16(d * sum as f32)
        } else {
            0.0
        };
    }
}

/// `x.len()` must be a multiple of 256.
pub fn quantize_q8k(x: &[f32], out: &mut [BlockQ8K]) {
    for (b, o) in x.chunks_exact(256).zip(out.iter_mut()) {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in b {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            *o = BlockQ8K::default();
            continue;
        }
        let iscale = -127.0 / max;
        for (q, v) in o.qs.iter_mut().zip(b) {
            *q = ((iscale * v).round_ties_even() as i32).min(127) as i8;
        }
        for (g, s) in o.bsums.iter_mut().enumerate() {
            *s = o.qs[g * 16..g * 16 + 16].iter().map(|&q| q as i16).sum();
        }
        o.d = 1.0 / iscale;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_round_trips_within_half_a_step() {
        let x: Vec<f32> = (0..256)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let mut b = vec![BlockQ8::default(); 8];
        quantize_q8(&x, true, &mut b);
        for (i, v) in x.iter().enumerate() {
            let blk = &b[i / 32];
            assert!((blk.d * blk.qs[i % 32] as f32 - v).abs() <= blk.d * 0.5 + 1e-3);
        }
        let mut k = vec![BlockQ8K::default(); 1];
        quantize_q8k(&x, &mut k);
        for (i, v) in x.iter().enumerate() {
            assert!((k[0].d * k[0].qs[i] as f32 - v).abs() <= k[0].d.abs() * 0.5 + 1e-5);
        }
        assert_eq!(
            k[0].bsums[3],
            k[0].qs[48..64].iter().map(|&q| q as i16).sum::<i16>()
        );
    }
}
