use super::*;
use crate::testutil::quant_rows;

const KINDS: [Kind; 10] = [
    Kind::Q4_0,
    Kind::Q4_1,
    Kind::Q5_0,
    Kind::Q5_1,
    Kind::Q8_0,
    Kind::IQ4NL,
    Kind::Q4K,
    Kind::Q5K,
    Kind::Q6K,
    Kind::IQ4XS,
];

#[test]
fn packing_keeps_every_value_bit_for_bit() {
    let pool = Pool::new(2).unwrap();
    // 37 rows: two full groups and a partial one; 512 columns: two K-quant superblocks.
    let (rows, cols) = (37, 512);
    for k in KINDS {
        let ty = k.dtype();
        let raw = quant_rows(ty, rows, cols, 11);
        let p = Packed::pack(ty, &raw, rows, cols, &pool).unwrap();
        assert_eq!(p.groups(), 3);
        let rb = ty.row_bytes(cols).unwrap();
        let mut want = vec![0f32; cols];
        for r in 0..rows {
            suanli_core::quant::dequantize(ty, &raw[r * rb..(r + 1) * rb], &mut want).unwrap();
            let got = p.unpack_row(r);
            for (c, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(
                    g.to_bits(),
                    w.to_bits(),
                    "{k:?} row {r} col {c}: {g} vs {w}"
                );
            }
        }
        // Padding rows of the last group are zero.
        for r in rows..p.groups() * ROWS {
            assert!(p.unpack_row(r).iter().all(|&v| v == 0.0), "{k:?}");
        }
    }
}

#[test]
fn sizes_follow_the_file_layout() {
    // Same bytes as the file for the legacy types and Q6_K; K-quant scales unpacked to bytes.
    for k in KINDS {
        let file = k.dtype().row_bytes(k.sb_cols()).unwrap() * ROWS;
        let extra = match k {
            Kind::Q4K | Kind::Q5K => 64,
            Kind::IQ4XS => 32,
            _ => 0,
        };
        assert_eq!(k.sb_bytes(), file + extra, "{k:?}");
    }
}

#[test]
fn refuses_what_it_cannot_pack() {
    let pool = Pool::new(1).unwrap();
    let raw = quant_rows(DType::Q4K, 1, 256, 1);
    assert!(Packed::pack(DType::Q4K, &raw, 1, 256, &pool).is_ok());
    assert!(Packed::pack(DType::Q4K, &raw[1..], 1, 256, &pool).is_err());
    assert!(Packed::pack(DType::F16, &raw, 1, 72, &pool).is_err());
    assert!(Packed::pack(DType::Q2K, &raw, 1, 256, &pool).is_err());
}
