//! Deterministic test data shared by the kernel and layout tests.

use suanli_core::DType;

/// `n` pseudo-random bytes (an LCG, so failures reproduce).
pub fn bytes(n: usize, seed: u32) -> Vec<u8> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(1664525).wrapping_add(1013904223);
            (s >> 24) as u8
        })
        .collect()
}

/// `rows` quantized rows of `n` elements: random quants with sane f16 scales (no NaN/Inf).
pub fn quant_rows(ty: DType, rows: usize, n: usize, seed: u32) -> Vec<u8> {
    let mut r = bytes(ty.row_bytes(n).unwrap() * rows, seed);
    for blk in r.chunks_exact_mut(ty.block_bytes()) {
        for &o in suanli_core::quant::f16_scale_offsets(ty) {
            let v = half::f16::from_f32(0.002 + (blk[o] % 13) as f32 * 0.001).to_le_bytes();
            blk[o..o + 2].copy_from_slice(&v);
        }
    }
    r
}

/// A packed product's operands: `rows` random rows of `cols` (type `ty`) in file layout and
/// packed, `n` tokens of activations in about ±5.5 quantized for the packed kernels, and a bias
/// per row.
#[cfg(target_arch = "x86_64")]
pub fn packed_case(
    pool: &crate::pool::Pool,
    ty: DType,
    (rows, cols, n): (usize, usize, usize),
    seed: u32,
) -> (
    Vec<u8>,
    crate::packed::Packed,
    crate::kernels::pacts::PActs,
    Vec<f32>,
) {
    let raw = quant_rows(ty, rows, cols, seed);
    let p = crate::packed::Packed::pack(ty, &raw, rows, cols, pool).unwrap();
    let x: Vec<f32> = bytes(n * cols, seed + 6)
        .iter()
        .map(|&b| (b as f32 - 128.0) / 23.0)
        .collect();
    let mut a = crate::kernels::pacts::PActs::default();
    a.fill(pool, &x, n, cols, true);
    let bias = (0..rows).map(|r| r as f32 * 0.25 - 3.0).collect();
    (raw, p, a, bias)
}
