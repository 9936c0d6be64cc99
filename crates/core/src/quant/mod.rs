//! Scalar dequantization of every supported block format, written to match ggml's reference
//! (`dequantize_row_*` in ggml-quants.c) and the `gguf` Python package bit for bit: each scale
//! product is formed in f32 first, then applied, in the same order.
//!
//! These are the oracles: SIMD kernels elsewhere must agree with them.

use crate::DType;
use half::{bf16, f16};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("dequantize {ty}: {bytes} bytes do not hold {elems} elements (need {need})")]
pub struct SizeMismatch {
    pub ty: DType,
    pub bytes: usize,
    pub elems: usize,
    pub need: usize,
}

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantize `out.len()` elements stored in `src` as `ty`.
pub fn dequantize(ty: DType, src: &[u8], out: &mut [f32]) -> Result<(), SizeMismatch> {
    let need = ty.row_bytes(out.len()).map_err(|_| SizeMismatch {
        ty,
        bytes: src.len(),
        elems: out.len(),
        need: usize::MAX,
    })?;
    if src.len() != need {
        return Err(SizeMismatch {
            ty,
            bytes: src.len(),
            elems: out.len(),
            need,
        });
    }
    let bb = ty.block_bytes();
    let be = ty.block_elems();
    match ty {
        DType::F32 => {
            for (o, c) in out.iter_mut().zip(src.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        DType::F16 => {
            for (o, c) in out.iter_mut().zip(src.chunks_exact(2)) {
                *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        DType::BF16 => {
            for (o, c) in out.iter_mut().zip(src.chunks_exact(2)) {
                *o = bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        _ => {
            let f: fn(&[u8], &mut [f32]) = match ty {
                DType::Q4_0 => block_q4_0,
                DType::Q4_1 => block_q4_1,
                DType::Q5_0 => block_q5_0,
                DType::Q5_1 => block_q5_1,
                DType::Q8_0 => block_q8_0,
                DType::Q2K => block_q2_k,
                DType::Q3K => block_q3_k,
                DType::Q4K => block_q4_k,
                DType::Q5K => block_q5_k,
                DType::Q6K => block_q6_k,
                DType::IQ4NL => block_iq4_nl,
                DType::IQ4XS => block_iq4_xs,
                DType::F32 | DType::F16 | DType::BF16 => unreachable!("handled above"),
            };
            for (b, o) in src.chunks_exact(bb).zip(out.chunks_exact_mut(be)) {
                f(b, o);
            }
        }
    }
    Ok(())
}

/// Byte offsets of the f16 scale fields inside one block (test generators set them to sane
/// values so that random blocks dequantize to finite numbers).
pub fn f16_scale_offsets(ty: DType) -> &'static [usize] {
    match ty {
        DType::Q2K => &[80, 82],
        DType::Q3K => &[108],
        DType::Q6K => &[208],
        DType::Q4_1 | DType::Q5_1 | DType::Q4K | DType::Q5K => &[0, 2],
        DType::Q4_0 | DType::Q5_0 | DType::Q8_0 | DType::IQ4NL | DType::IQ4XS => &[0],
        DType::F32 | DType::F16 | DType::BF16 => &[],
    }
}

/// Scalar dot product of a stored row with an f32 vector (the oracle for fused kernels).
pub fn dot(ty: DType, row: &[u8], x: &[f32]) -> Result<f32, SizeMismatch> {
    let mut tmp = vec![0f32; x.len()];
    dequantize(ty, row, &mut tmp)?;
    Ok(tmp.iter().zip(x).map(|(a, b)| a * b).sum())
}

fn block_q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    for j in 0..16 {
        y[j] = d * ((qs[j] & 0xF) as i32 - 8) as f32;
        y[j + 16] = d * ((qs[j] >> 4) as i32 - 8) as f32;
    }
}

fn block_q4_1(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qs = &b[4..20];
    for j in 0..16 {
        y[j] = d * (qs[j] & 0xF) as f32 + m;
        y[j + 16] = d * (qs[j] >> 4) as f32 + m;
    }
}

fn block_q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let qs = &b[6..22];
    for j in 0..16 {
        let h0 = ((qh >> j) & 1) << 4;
        let h1 = ((qh >> (j + 16)) & 1) << 4;
        y[j] = d * ((((qs[j] & 0xF) as u32) | h0) as i32 - 16) as f32;
        y[j + 16] = d * ((((qs[j] >> 4) as u32) | h1) as i32 - 16) as f32;
    }
}

fn block_q5_1(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let qs = &b[8..24];
    for j in 0..16 {
        let h0 = ((qh >> j) & 1) << 4;
        let h1 = ((qh >> (j + 16)) & 1) << 4;
        y[j] = d * (((qs[j] & 0xF) as u32) | h0) as f32 + m;
        y[j + 16] = d * (((qs[j] >> 4) as u32) | h1) as f32 + m;
    }
}

fn block_q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for j in 0..32 {
        y[j] = (b[2 + j] as i8) as f32 * d;
    }
}

fn block_q2_k(b: &[u8], y: &mut [f32]) {
    let scales = &b[0..16];
    let qs = &b[16..80];
    let d = f16_at(b, 80);
    let dmin = f16_at(b, 82);
    // 16 groups of 16; group g uses scale byte g, bits (2*((g/2)%4)) of q bytes in half g/8.
    for g in 0..16 {
        let sc = scales[g];
        let dl = d * (sc & 0xF) as f32;
        let ml = dmin * (sc >> 4) as f32;
        let half = g / 8; // which 32-byte run of qs
        let shift = 2 * ((g % 8) / 2);
        let off = (g % 2) * 16;
        for l in 0..16 {
            let q = (qs[half * 32 + off + l] >> shift) & 3;
            y[g * 16 + l] = dl * q as f32 - ml;
        }
    }
}

pub(crate) fn q3_k_scales(s: &[u8]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for i in 0..16 {
        let low = if i < 8 { s[i] & 0xF } else { s[i - 8] >> 4 };
        let high = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
        out[i] = ((low | (high << 4)) as i8).wrapping_sub(32);
    }
    out
}

fn block_q3_k(b: &[u8], y: &mut [f32]) {
    let hmask = &b[0..32];
    let qs = &b[32..96];
    let scales = q3_k_scales(&b[96..108]);
    let d = f16_at(b, 108);
    for g in 0..16 {
        let dl = d * scales[g] as f32;
        let half = g / 8;
        let shift = 2 * ((g % 8) / 2);
        let off = (g % 2) * 16;
        let hbit = g / 2; // bit index into hmask
        for l in 0..16 {
            let q = ((qs[half * 32 + off + l] >> shift) & 3) as i32;
            let h = if hmask[off + l] & (1 << hbit) != 0 {
                0
            } else {
                4
            };
            y[g * 16 + l] = dl * (q - h) as f32;
        }
    }
}

/// The 6-bit scale and min of sub-block `j` (0..8) in a Q4_K/Q5_K scales array.
pub fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

fn block_q4_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let scales = &b[4..16];
    let qs = &b[16..144];
    for c in 0..4 {
        let (s1, m1) = scale_min_k4(2 * c, scales);
        let (s2, m2) = scale_min_k4(2 * c + 1, scales);
        let (d1, m1) = (d * s1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * s2 as f32, dmin * m2 as f32);
        let q = &qs[c * 32..c * 32 + 32];
        for l in 0..32 {
            y[c * 64 + l] = d1 * (q[l] & 0xF) as f32 - m1;
            y[c * 64 + 32 + l] = d2 * (q[l] >> 4) as f32 - m2;
        }
    }
}

fn block_q5_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    for c in 0..4 {
        let (s1, m1) = scale_min_k4(2 * c, scales);
        let (s2, m2) = scale_min_k4(2 * c + 1, scales);
        let (d1, m1) = (d * s1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * s2 as f32, dmin * m2 as f32);
        let q = &qs[c * 32..c * 32 + 32];
        let (u1, u2) = (1u8 << (2 * c), 2u8 << (2 * c));
        for l in 0..32 {
            let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            y[c * 64 + l] = d1 * ((q[l] & 0xF) + h1) as f32 - m1;
            y[c * 64 + 32 + l] = d2 * ((q[l] >> 4) + h2) as f32 - m2;
        }
    }
}

fn block_q6_k(b: &[u8], y: &mut [f32]) {
    let ql = &b[0..128];
    let qh = &b[128..192];
    let sc = &b[192..208];
    let d = f16_at(b, 208);
    for n in 0..2 {
        let (ql, qh, sc, y) = (
            &ql[n * 64..],
            &qh[n * 32..],
            &sc[n * 8..],
            &mut y[n * 128..],
        );
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            y[l] = (d * (sc[is] as i8) as f32) * q1 as f32;
            y[l + 32] = (d * (sc[is + 2] as i8) as f32) * q2 as f32;
            y[l + 64] = (d * (sc[is + 4] as i8) as f32) * q3 as f32;
            y[l + 96] = (d * (sc[is + 6] as i8) as f32) * q4 as f32;
        }
    }
}

/// The 16 levels of IQ4_NL / IQ4_XS.
pub const IQ4_LEVELS: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

fn block_iq4_nl(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for j in 0..16 {
        y[j] = d * IQ4_LEVELS[(b[2 + j] & 0xF) as usize] as f32;
        y[j + 16] = d * IQ4_LEVELS[(b[2 + j] >> 4) as usize] as f32;
    }
}

/// The signed 6-bit scale (ls − 32) of sub-block `ib` (0..8) of an IQ4_XS block.
pub(crate) fn iq4_xs_scale(b: &[u8], ib: usize) -> i32 {
    let scales_h = u16::from_le_bytes([b[2], b[3]]);
    let lo = (b[4 + ib / 2] >> (4 * (ib % 2))) & 0xF;
    let hi = ((scales_h >> (2 * ib)) & 3) as u8;
    (lo | (hi << 4)) as i32 - 32
}

fn block_iq4_xs(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for ib in 0..8 {
        let dl = d * iq4_xs_scale(b, ib) as f32;
        let qs = &b[8 + ib * 16..8 + ib * 16 + 16];
        for j in 0..16 {
            y[ib * 32 + j] = dl * IQ4_LEVELS[(qs[j] & 0xF) as usize] as f32;
            y[ib * 32 + 16 + j] = dl * IQ4_LEVELS[(qs[j] >> 4) as usize] as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_wrong_sizes() {
        let mut out = [0f32; 32];
        assert!(dequantize(DType::Q4_0, &[0u8; 17], &mut out).is_err());
        let mut out = [0f32; 33];
        assert!(dequantize(DType::Q4_0, &[0u8; 18], &mut out).is_err());
    }

    #[test]
    fn q8_0_block_scales_int8() {
        let mut b = vec![0u8; 34];
        b[0..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        b[2] = (-4i8) as u8;
        b[3] = 6;
        let mut out = [0f32; 32];
        dequantize(DType::Q8_0, &b, &mut out).unwrap();
        assert_eq!(&out[..3], &[-2.0, 3.0, 0.0]);
    }
}

pub mod dot;
pub mod q4;
pub mod q8;
