//! AVX2 + FMA kernels. The bodies are plain Rust compiled with the features enabled, so the
//! compiler emits 256-bit FMA code; they are only called after run-time detection.

#[target_feature(enable = "avx2,fma")]
fn dot_impl(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 32];
    let ca = a.chunks_exact(32);
    let cb = b.chunks_exact(32);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..32 {
            acc[i] = x[i].mul_add(y[i], acc[i]);
        }
    }
    let mut s = 0f32;
    for (x, y) in ra.iter().zip(rb) {
        s = x.mul_add(*y, s);
    }
    let mut t = [0f32; 8];
    for i in 0..8 {
        t[i] = acc[i] + acc[i + 8] + acc[i + 16] + acc[i + 24];
    }
    t.iter().sum::<f32>() + s
}

#[target_feature(enable = "avx2,fma")]
fn axpy_impl(a: f32, x: &[f32], y: &mut [f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi = a.mul_add(*xi, *yi);
    }
}

pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: this table entry is installed only when avx2 and fma were detected at run time.
    unsafe { dot_impl(a, b) }
}

pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    // SAFETY: as above, installed only after detection.
    unsafe { axpy_impl(a, x, y) }
}

use suanli_core::quant::dot as scalar;
use suanli_core::quant::q8::{BlockQ8, BlockQ8K};
use suanli_core::DType;

use super::avx2_q;

// Integer dot products: AVX2 kernels in `avx2_q.rs`; Q2_K and Q3_K use the scalar oracle.
pub fn dot_q8(ty: DType, row: &[u8], x: &[BlockQ8]) -> f32 {
    // SAFETY: installed only after avx2/fma detection; rows and activations were sized together
    // by the caller (whole blocks, same count), and the kernels read only within them.
    unsafe {
        match ty {
            DType::Q4_0 => avx2_q::q4_0(row, x),
            DType::Q4_1 => avx2_q::q4_1(row, x),
            DType::Q5_0 => avx2_q::q5_0(row, x),
            DType::Q5_1 => avx2_q::q5_1(row, x),
            DType::Q8_0 => avx2_q::q8_0(row, x),
            _ => scalar::dot_q8(ty, row, x),
        }
    }
}

pub fn dot_q8k(ty: DType, row: &[u8], x: &[BlockQ8K]) -> f32 {
    // SAFETY: as above.
    unsafe {
        match ty {
            DType::Q4K => avx2_q::q4_k(row, x),
            DType::Q5K => avx2_q::q5_k(row, x),
            DType::Q6K => avx2_q::q6_k(row, x),
            _ => scalar::dot_q8k(ty, row, x),
        }
    }
}
