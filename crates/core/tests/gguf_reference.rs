//! Every block format dequantizes exactly as the `gguf` Python package's reference code
//! (vectors from scripts/gen_quant_vectors.py), bit for bit.

use std::path::PathBuf;
use suanli_core::{quant, DType};

fn fixture(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/quant")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn every_type_dequantizes_bit_exactly_like_gguf_py() {
    for ty in DType::ALL {
        let raw = fixture(&format!("{}.bin", ty.name()));
        let want: Vec<f32> = fixture(&format!("{}.f32", ty.name()))
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let mut got = vec![0f32; want.len()];
        quant::dequantize(ty, &raw, &mut got).unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                g.to_bits(),
                w.to_bits(),
                "{ty} element {i}: {g} vs reference {w}"
            );
        }
        // The scalar dot product agrees with dequantize-then-multiply.
        let x: Vec<f32> = (0..want.len())
            .map(|i| ((i * 7 % 13) as f32 - 6.0) / 8.0)
            .collect();
        let d = quant::dot(ty, &raw, &x).unwrap();
        let r: f64 = want
            .iter()
            .zip(&x)
            .map(|(a, b)| *a as f64 * *b as f64)
            .sum();
        assert!(
            (d as f64 - r).abs() <= 1e-4 * (1.0 + r.abs()),
            "{ty} dot {d} vs {r}"
        );
    }
}
