//! Q4_0 quantization, ggml's reference rule (`quantize_row_q4_0_ref`): per block of 32, the
//! value of largest magnitude maps to -8, the scale is that value / -8 (stored as f16), and
//! each value is `min(15, trunc(x / scale + 8.5))`. Used where a model is re-quantized at load
//! (a draft model's smaller copy): the stored format itself is ggml's.

use half::f16;

/// Bytes of one Q4_0 block: the f16 scale and 16 bytes of nibbles.
pub const Q4_0_BLOCK_BYTES: usize = 18;

/// Quantize `x` (a multiple of 32 values) into `out` (18 bytes per 32 values): element `j` of a
/// block in the low nibble of byte `j`, element `j + 16` in its high nibble.
pub fn quantize_q4_0(x: &[f32], out: &mut [u8]) {
    assert!(
        x.len().is_multiple_of(32),
        "Q4_0 quantizes whole blocks of 32"
    );
    assert_eq!(out.len(), x.len() / 32 * Q4_0_BLOCK_BYTES);
    for (b, o) in x
        .chunks_exact(32)
        .zip(out.chunks_exact_mut(Q4_0_BLOCK_BYTES))
    {
        // The first value of largest magnitude, with its sign.
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in b {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        o[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
        let q = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
        for j in 0..16 {
            o[2 + j] = q(b[j]) | (q(b[j + 16]) << 4);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::dequantize;
    use crate::DType;

    /// `scripts/gen_q4_0_reference.py`'s blocks: the `gguf` package's Q4_0 quantizer.
    const GGUF_PY: [&str; 6] = [
        "ecbdcf279d047be248bf269df36ad148ae15",
        "5dc7730ca53fc851fb841da63fd962fb942e",
        "f09b6ad148bf158cf35ac037ae047be259cf",
        "d0e348ae158cf259c037ae047be259bf269d",
        "008088888888888888888888888888888888",
        "ca002eb740ea730ca53fc851fb841da63fd9",
    ];
    const SCALES: [f32; 6] = [0.37, -1.9, 1e-3, 250.0, 0.0, 3.1e-6];

    fn blocks() -> Vec<f32> {
        let mut x = Vec::new();
        for (b, s) in SCALES.iter().enumerate() {
            x.extend(
                (0..32)
                    .map(|j| ((j * 37 + b * 11) % 64) as f32 - 31.0)
                    .map(|v| v * s),
            );
        }
        x
    }

    #[test]
    fn q4_0_matches_the_gguf_package_byte_for_byte() {
        let x = blocks();
        let mut q = vec![0u8; 6 * Q4_0_BLOCK_BYTES];
        quantize_q4_0(&x, &mut q);
        for (b, want) in GGUF_PY.iter().enumerate() {
            let got: String = q[b * 18..(b + 1) * 18]
                .iter()
                .map(|v| format!("{v:02x}"))
                .collect();
            assert_eq!(&got, want, "block {b} (scale {})", SCALES[b]);
        }
    }

    #[test]
    fn q4_0_round_trip_is_within_half_a_step() {
        let x = blocks();
        let mut q = vec![0u8; 6 * Q4_0_BLOCK_BYTES];
        quantize_q4_0(&x, &mut q);
        let mut y = vec![0f32; x.len()];
        dequantize(DType::Q4_0, &q, &mut y).unwrap();
        for (b, (xb, yb)) in x.chunks(32).zip(y.chunks(32)).enumerate() {
            let max = xb
                .iter()
                .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
            // The step is |max| / 8, rounded to f16 (relative 2^-11); the far side from the
            // largest value clips at 7 steps (the largest itself is -8 of them).
            let step = max.abs() / 8.0;
            for (j, (a, r)) in xb.iter().zip(yb).enumerate() {
                let bound = step * 0.5 + a.abs() * 2e-3;
                let clipped = a * max < 0.0 && a.abs() > 7.5 * step;
                assert!(
                    clipped || (a - r).abs() <= bound,
                    "block {b}, value {j}: {a} came back as {r}"
                );
            }
        }
    }
}
