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
