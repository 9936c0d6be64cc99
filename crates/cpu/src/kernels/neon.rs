//! NEON (aarch64) kernels: f32 dot/axpy and the integer dots of the common legacy types
//! (Q8_0, Q4_0, Q4_1) with Q8 activations; the other types take the scalar oracle. NEON is part
//! of the aarch64 baseline, so these need no run-time feature check.

use std::arch::aarch64::*;
use suanli_core::quant::dot as scalar;
use suanli_core::quant::q8::BlockQ8;
use suanli_core::DType;

pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let n = a.len();
    // SAFETY: every load is at i + 16 ≤ n (or i + 4 ≤ n) of both slices.
    unsafe {
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [vdupq_n_f32(0.0); 4];
        let mut i = 0;
        while i + 16 <= n {
            for (j, s) in acc.iter_mut().enumerate() {
                *s = vfmaq_f32(
                    *s,
                    vld1q_f32(pa.add(i + 4 * j)),
                    vld1q_f32(pb.add(i + 4 * j)),
                );
            }
            i += 16;
        }
        while i + 4 <= n {
            acc[0] = vfmaq_f32(acc[0], vld1q_f32(pa.add(i)), vld1q_f32(pb.add(i)));
            i += 4;
        }
        let v = vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3]));
        let mut s = vaddvq_f32(v);
        for j in i..n {
            s += a[j] * b[j];
        }
        s
    }
}

pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len());
    let n = x.len();
    // SAFETY: loads and stores at i + 4 ≤ n.
    unsafe {
        let (px, py) = (x.as_ptr(), y.as_mut_ptr());
        let mut i = 0;
        while i + 4 <= n {
            vst1q_f32(
                py.add(i),
                vfmaq_n_f32(vld1q_f32(py.add(i)), vld1q_f32(px.add(i)), a),
            );
            i += 4;
        }
        for j in i..n {
            y[j] += a * x[j];
        }
    }
}

/// Σ w·y over 32 signed bytes. Products fit i16 pairwise: |w| ≤ 128 and |y| ≤ 127 (the Q8
/// activation quantizer never yields −128), so two products stay within ±32 512.
#[inline(always)]
unsafe fn isum32(w0: int8x16_t, w1: int8x16_t, y: &[i8; 32]) -> i32 {
    let (y0, y1) = (vld1q_s8(y.as_ptr()), vld1q_s8(y.as_ptr().add(16)));
    let p0 = vmlal_high_s8(vmull_s8(vget_low_s8(w0), vget_low_s8(y0)), w0, y0);
    let p1 = vmlal_high_s8(vmull_s8(vget_low_s8(w1), vget_low_s8(y1)), w1, y1);
    vaddvq_s32(vaddq_s32(vpaddlq_s16(p0), vpaddlq_s16(p1)))
}

/// The 32 nibbles of a Q4 block as bytes: low nibbles are elements 0..16, high ones 16..32.
#[inline(always)]
unsafe fn nibbles(qs: *const u8) -> (uint8x16_t, uint8x16_t) {
    let v = vld1q_u8(qs);
    (vandq_u8(v, vdupq_n_u8(0x0F)), vshrq_n_u8::<4>(v))
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    half::f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

pub fn dot_q8(ty: DType, row: &[u8], x: &[BlockQ8]) -> f32 {
    let bb = ty.block_bytes();
    assert!(row.len() >= x.len() * bb);
    let mut sum = 0f32;
    // SAFETY: each block `b` is `bb` bytes (asserted above), enough for every load below.
    unsafe {
        match ty {
            DType::Q8_0 => {
                for (b, y) in row.chunks_exact(bb).zip(x) {
                    let p = b.as_ptr().add(2) as *const i8;
                    let s = isum32(vld1q_s8(p), vld1q_s8(p.add(16)), &y.qs);
                    sum += s as f32 * (f16_at(b, 0) * y.d);
                }
            }
            DType::Q4_0 => {
                let eight = vdupq_n_s8(8);
                for (b, y) in row.chunks_exact(bb).zip(x) {
                    let (lo, hi) = nibbles(b.as_ptr().add(2));
                    let w0 = vsubq_s8(vreinterpretq_s8_u8(lo), eight);
                    let w1 = vsubq_s8(vreinterpretq_s8_u8(hi), eight);
                    sum += isum32(w0, w1, &y.qs) as f32 * f16_at(b, 0) * y.d;
                }
            }
            DType::Q4_1 => {
                for (b, y) in row.chunks_exact(bb).zip(x) {
                    let (lo, hi) = nibbles(b.as_ptr().add(4));
                    let s = isum32(vreinterpretq_s8_u8(lo), vreinterpretq_s8_u8(hi), &y.qs);
                    sum += (f16_at(b, 0) * y.d) * s as f32 + f16_at(b, 2) * y.s;
                }
            }
            _ => return scalar::dot_q8(ty, row, x),
        }
    }
    sum
}
