//! Scalar dot products of stored weight rows with quantized activations (`q8.rs`), the oracle
//! for the SIMD kernels. Integer sums are exact; scales are applied per block in f32 in the
//! same way as ggml's reference (`ggml_vec_dot_*_generic`).

// The oracles index a block's quants and the activations' by the format's own positions (j
// and j + 16, a group's offsets): iterators would hide the layout they are there to state.
#![allow(clippy::needless_range_loop)]

use super::q8::{BlockQ8, BlockQ8K};
use super::scale_min_k4;
use crate::DType;
use half::f16;

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dot of a row of a 32-element-block type with Q8_0/Q8_1 activations.
pub fn dot_q8(ty: DType, row: &[u8], x: &[BlockQ8]) -> f32 {
    let bb = ty.block_bytes();
    let f: fn(&[u8], &BlockQ8) -> f32 = match ty {
        DType::Q4_0 => q4_0,
        DType::Q4_1 => q4_1,
        DType::Q5_0 => q5_0,
        DType::Q5_1 => q5_1,
        DType::Q8_0 => q8_0,
        DType::IQ4NL => iq4_nl,
        other => panic!("dot_q8 called for {other}"),
    };
    let mut sum = 0f32;
    for (b, y) in row.chunks_exact(bb).zip(x) {
        sum += f(b, y);
    }
    sum
}

/// Dot of a row of a K-quant type with Q8_K activations.
pub fn dot_q8k(ty: DType, row: &[u8], x: &[BlockQ8K]) -> f32 {
    let bb = ty.block_bytes();
    let f: fn(&[u8], &BlockQ8K) -> f32 = match ty {
        DType::Q2K => q2_k,
        DType::Q3K => q3_k,
        DType::Q4K => q4_k,
        DType::Q5K => q5_k,
        DType::Q6K => q6_k,
        DType::IQ4XS => iq4_xs,
        other => panic!("dot_q8k called for {other}"),
    };
    let mut sum = 0f32;
    for (b, y) in row.chunks_exact(bb).zip(x) {
        sum += f(b, y);
    }
    sum
}

fn q4_0(b: &[u8], y: &BlockQ8) -> f32 {
    let qs = &b[2..18];
    let mut s = 0i32;
    for j in 0..16 {
        s += ((qs[j] & 0xF) as i32 - 8) * y.qs[j] as i32
            + ((qs[j] >> 4) as i32 - 8) * y.qs[j + 16] as i32;
    }
    s as f32 * f16_at(b, 0) * y.d
}

fn q4_1(b: &[u8], y: &BlockQ8) -> f32 {
    let qs = &b[4..20];
    let mut s = 0i32;
    for j in 0..16 {
        s += (qs[j] & 0xF) as i32 * y.qs[j] as i32 + (qs[j] >> 4) as i32 * y.qs[j + 16] as i32;
    }
    (f16_at(b, 0) * y.d) * s as f32 + f16_at(b, 2) * y.s
}

fn q5_0(b: &[u8], y: &BlockQ8) -> f32 {
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let qs = &b[6..22];
    let mut s = 0i32;
    for j in 0..16 {
        let h0 = (((qh >> j) & 1) << 4) as i32;
        let h1 = (((qh >> (j + 16)) & 1) << 4) as i32;
        s += (((qs[j] & 0xF) as i32 | h0) - 16) * y.qs[j] as i32
            + (((qs[j] >> 4) as i32 | h1) - 16) * y.qs[j + 16] as i32;
    }
    s as f32 * f16_at(b, 0) * y.d
}

fn q5_1(b: &[u8], y: &BlockQ8) -> f32 {
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let qs = &b[8..24];
    let mut s = 0i32;
    for j in 0..16 {
        let h0 = (((qh >> j) & 1) << 4) as i32;
        let h1 = (((qh >> (j + 16)) & 1) << 4) as i32;
        s += ((qs[j] & 0xF) as i32 | h0) * y.qs[j] as i32
            + ((qs[j] >> 4) as i32 | h1) * y.qs[j + 16] as i32;
    }
    (f16_at(b, 0) * y.d) * s as f32 + f16_at(b, 2) * y.s
}

fn q8_0(b: &[u8], y: &BlockQ8) -> f32 {
    let mut s = 0i32;
    for j in 0..32 {
        s += (b[2 + j] as i8) as i32 * y.qs[j] as i32;
    }
    s as f32 * (f16_at(b, 0) * y.d)
}

fn q2_k(b: &[u8], y: &BlockQ8K) -> f32 {
    let (sc, qs) = (&b[0..16], &b[16..80]);
    let mut isum = 0i32;
    let mut msum = 0i32;
    for g in 0..16 {
        let (half, shift, off) = (g / 8, 2 * ((g % 8) / 2), (g % 2) * 16);
        let mut s = 0i32;
        for l in 0..16 {
            s += ((qs[half * 32 + off + l] >> shift) & 3) as i32 * y.qs[g * 16 + l] as i32;
        }
        isum += (sc[g] & 0xF) as i32 * s;
        msum += (sc[g] >> 4) as i32 * y.bsums[g] as i32;
    }
    let dall = y.d * f16_at(b, 80);
    let dmin = y.d * f16_at(b, 82);
    dall * isum as f32 - dmin * msum as f32
}

fn q3_k(b: &[u8], y: &BlockQ8K) -> f32 {
    let (hmask, qs) = (&b[0..32], &b[32..96]);
    let scales = super::q3_k_scales(&b[96..108]);
    let mut isum = 0i32;
    for g in 0..16 {
        let (half, shift, off, hbit) = (g / 8, 2 * ((g % 8) / 2), (g % 2) * 16, g / 2);
        let mut s = 0i32;
        for l in 0..16 {
            let q = ((qs[half * 32 + off + l] >> shift) & 3) as i32;
            let h = if hmask[off + l] & (1 << hbit) != 0 {
                0
            } else {
                4
            };
            s += (q - h) * y.qs[g * 16 + l] as i32;
        }
        isum += scales[g] as i32 * s;
    }
    f16_at(b, 108) * y.d * isum as f32
}

/// Shared by Q4_K and Q5_K: `val(c, l, hi)` gives the unsigned quant of element c*64 + hi*32 + l.
fn k4_like(b: &[u8], y: &BlockQ8K, val: impl Fn(usize, usize, bool) -> i32) -> f32 {
    let scales = &b[4..16];
    let mut isum = 0i32;
    let mut msum = 0i32;
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, scales);
        let (c, hi) = (j / 2, j % 2 == 1);
        let mut s = 0i32;
        for l in 0..32 {
            s += val(c, l, hi) * y.qs[j * 32 + l] as i32;
        }
        isum += sc as i32 * s;
        msum += m as i32 * (y.bsums[2 * j] as i32 + y.bsums[2 * j + 1] as i32);
    }
    f16_at(b, 0) * y.d * isum as f32 - f16_at(b, 2) * y.d * msum as f32
}

fn q4_k(b: &[u8], y: &BlockQ8K) -> f32 {
    let qs = &b[16..144];
    k4_like(b, y, |c, l, hi| {
        let q = qs[c * 32 + l];
        (if hi { q >> 4 } else { q & 0xF }) as i32
    })
}

fn q5_k(b: &[u8], y: &BlockQ8K) -> f32 {
    let (qh, qs) = (&b[16..48], &b[48..176]);
    k4_like(b, y, |c, l, hi| {
        let q = qs[c * 32 + l];
        let bit = 2 * c + hi as usize;
        (if hi { q >> 4 } else { q & 0xF }) as i32 + if qh[l] & (1 << bit) != 0 { 16 } else { 0 }
    })
}

fn q6_k(b: &[u8], y: &BlockQ8K) -> f32 {
    let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
    let mut isum = 0i32;
    for n in 0..2 {
        let (ql, qh) = (&ql[n * 64..], &qh[n * 32..]);
        // Element n*128 + k*32 + l, group (n*128 + k*32 + l) / 16.
        let mut sums = [0i32; 8];
        for l in 0..32 {
            let q = [
                ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32,
                ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32,
                ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32,
                ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32,
            ];
            for (k, qk) in q.iter().enumerate() {
                sums[k * 2 + l / 16] += qk * y.qs[n * 128 + k * 32 + l] as i32;
            }
        }
        for (g, s) in sums.iter().enumerate() {
            isum += (sc[n * 8 + g] as i8) as i32 * s;
        }
    }
    f16_at(b, 208) * y.d * isum as f32
}

fn iq4_nl(b: &[u8], y: &BlockQ8) -> f32 {
    let lv = &super::IQ4_LEVELS;
    let mut s = 0i32;
    for j in 0..16 {
        s += lv[(b[2 + j] & 0xF) as usize] as i32 * y.qs[j] as i32
            + lv[(b[2 + j] >> 4) as usize] as i32 * y.qs[j + 16] as i32;
    }
    s as f32 * (f16_at(b, 0) * y.d)
}

fn iq4_xs(b: &[u8], y: &BlockQ8K) -> f32 {
    let lv = &super::IQ4_LEVELS;
    let mut isum = 0i32;
    for ib in 0..8 {
        let qs = &b[8 + ib * 16..8 + ib * 16 + 16];
        let mut s = 0i32;
        for j in 0..16 {
            s += lv[(qs[j] & 0xF) as usize] as i32 * y.qs[ib * 32 + j] as i32
                + lv[(qs[j] >> 4) as usize] as i32 * y.qs[ib * 32 + 16 + j] as i32;
        }
        isum += super::iq4_xs_scale(b, ib) * s;
    }
    f16_at(b, 0) * y.d * isum as f32
}

#[cfg(test)]
mod tests {
    use super::super::q8::{act_format, quantize_q8, quantize_q8k, ActFormat};
    use super::*;

    /// The integer dot of a row with quantized activations equals the dot of the dequantized row
    /// with the dequantized activations (up to f32 rounding).
    #[test]
    fn integer_dots_equal_dequantized_dots() {
        let mut seed = 99u32;
        let mut rnd = || {
            seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
            (seed >> 16) as u8
        };
        let n = 512;
        let x: Vec<f32> = (0..n)
            .map(|i| ((i * 31 % 97) as f32 - 48.0) / 13.0)
            .collect();
        for ty in DType::ALL.into_iter().filter(|t| t.is_quantized()) {
            let mut row: Vec<u8> = (0..ty.row_bytes(n).unwrap()).map(|_| rnd()).collect();
            // Make the f16 scale fields small finite values.
            for blk in row.chunks_exact_mut(ty.block_bytes()) {
                for &o in super::super::f16_scale_offsets(ty) {
                    let v = f16::from_f32(0.01 + (blk[o + 1] % 7) as f32 * 0.003).to_le_bytes();
                    blk[o..o + 2].copy_from_slice(&v);
                }
            }
            let mut w = vec![0f32; n];
            super::super::dequantize(ty, &row, &mut w).unwrap();
            let (got, xd): (f32, Vec<f32>) = match act_format(ty) {
                ActFormat::Q8K => {
                    let mut q = vec![BlockQ8K::default(); n / 256];
                    quantize_q8k(&x, &mut q);
                    let xd = q
                        .iter()
                        .flat_map(|b| b.qs.iter().map(move |&v| v as f32 * b.d))
                        .collect();
                    (dot_q8k(ty, &row, &q), xd)
                }
                f => {
                    let mut q = vec![BlockQ8::default(); n / 32];
                    quantize_q8(&x, f == ActFormat::Q8_1, &mut q);
                    let xd = q
                        .iter()
                        .flat_map(|b| b.qs.iter().map(move |&v| v as f32 * b.d))
                        .collect();
                    (dot_q8(ty, &row, &q), xd)
                }
            };
            let want: f64 = w.iter().zip(&xd).map(|(a, b)| *a as f64 * *b as f64).sum();
            let mag: f64 = w
                .iter()
                .zip(&xd)
                .map(|(a, b)| (*a as f64 * *b as f64).abs())
                .sum();
            // Q4_1/Q5_1 use the f16-rounded block sum s, which is slightly off Σ d*q.
            let tol = if matches!(ty, DType::Q4_1 | DType::Q5_1) {
                2e-3
            } else {
                1e-5
            };
            assert!(
                (got as f64 - want).abs() <= tol * mag.max(1.0),
                "{ty}: {got} vs {want} (mag {mag})"
            );
        }
    }
}
