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

/// A packed product's output `out` (`[n, rows]`, bias included) against an f64 sum over the
/// dequantized weights (`raw`, file layout) and activations: within 2e-6 of Σ|w·x| (the f32
/// scale steps), `what` naming the case.
pub fn check_dequantized_dot(
    ty: DType,
    raw: &[u8],
    a: &crate::kernels::pacts::PActs,
    bias: &[f32],
    out: &[f32],
    (rows, cols, n): (usize, usize, usize),
    what: &str,
) {
    let rb = ty.row_bytes(cols).unwrap();
    let mut w = vec![0f32; cols];
    for r in 0..rows {
        suanli_core::quant::dequantize(ty, &raw[r * rb..(r + 1) * rb], &mut w).unwrap();
        for t in 0..n {
            let (mut want, mut mag) = (bias[r] as f64, bias[r].abs() as f64);
            for (c, wv) in w.iter().enumerate() {
                let m = a.meta[(t * cols + c) / 32];
                let xv = m.d as f64 * a.qs[t * cols + c] as f64;
                want += *wv as f64 * xv;
                mag += (*wv as f64 * xv).abs();
            }
            let got = out[t * rows + r] as f64;
            assert!(
                (got - want).abs() <= 2e-6 * mag + 1e-6,
                "{what} row {r} token {t}: {got} vs {want} (Σ|wx| {mag})"
            );
        }
    }
}

/// A packed kernel's output `out` (`[a.n, rows]`, bias included) is bit for bit
/// `Packed::reference_product`'s, `what` naming the case.
pub fn check_packed_bits(
    p: &crate::packed::Packed,
    a: &crate::kernels::pacts::PActs,
    bias: &[f32],
    out: &[f32],
    what: &str,
) {
    let want = p.reference_product(a, Some(bias));
    for (i, (x, y)) in out.iter().zip(&want).enumerate() {
        assert!(
            x.to_bits() == y.to_bits(),
            "{what} token {} row {}: {x} is not the reference's {y}",
            i / p.rows,
            i % p.rows
        );
    }
}
