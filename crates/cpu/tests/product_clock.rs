//! `CpuBackend::product_time` counts every matrix product once, with exactly its
//! multiply-adds: packed weights (one product, several at once, the gated pair, which the AMX
//! level fuses), file-layout weights and float weights, at every level this machine has. What
//! `bench` reports as the products' own rate rests on it.

use suanli_backend::{ActPrecision, Backend, HostTensor, Weight, WeightRole};
use suanli_core::DType;
use suanli_cpu::{kernels::Isa, CpuBackend, CpuWeight};

/// A weight of `ty` with small finite values (quantized: every block's scales 0.01).
fn weight(b: &CpuBackend, ty: DType, rows: usize, cols: usize) -> Weight<CpuWeight> {
    let rb = ty.row_bytes(cols).unwrap();
    let mut raw: Vec<u8> = (0..rb * rows).map(|i| (i * 7 % 251) as u8).collect();
    match ty {
        DType::BF16 => (0..rows * cols).for_each(|i| {
            let v = half::bf16::from_f32((i % 13) as f32 / 13.0 - 0.5);
            raw[2 * i..2 * i + 2].copy_from_slice(&v.to_le_bytes());
        }),
        _ => {
            for blk in raw.chunks_exact_mut(ty.block_bytes()) {
                for &o in suanli_core::quant::f16_scale_offsets(ty) {
                    blk[o..o + 2].copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
                }
            }
        }
    }
    let raw = suanli_formats::Bytes::from_vec(raw);
    let host = HostTensor {
        name: "w",
        dtype: ty,
        rows,
        cols,
        bytes: &raw,
        role: WeightRole::Matrix,
        precision: ActPrecision::Fast,
    };
    b.prepare_weight(host).unwrap()
}

#[test]
fn every_product_is_counted_once_with_its_multiply_adds() {
    let (rows, cols) = (48, 512);
    for isa in Isa::available() {
        // Repacked (where the level repacks), and kept in the file layout.
        for repack in [true, false] {
            let b = CpuBackend::with_isa(Some(2), isa).unwrap();
            let b = if repack { b } else { b.without_repacking() };
            // 3 tokens (VNNI tiles) and 40 (AMX tiles where the level has them, then VNNI).
            for n in [3, 40] {
                let mut x = b.alloc_act(n, cols).unwrap();
                let xs: Vec<f32> = (0..n * cols)
                    .map(|i| (i % 17) as f32 / 17.0 - 0.5)
                    .collect();
                b.upload(&xs, n, &mut x).unwrap();
                let [mut o1, mut o2, mut o3] = [0; 3].map(|_| b.alloc_act(n, rows).unwrap());
                let one = (n * rows * cols) as u64;
                let expect = |what: &str, macs: u64, f: &mut dyn FnMut()| {
                    let (s0, m0) = b.product_time();
                    f();
                    let (s1, m1) = b.product_time();
                    assert_eq!(m1 - m0, macs, "{} {what}, {n} tokens", isa.name());
                    assert!(s1 > s0, "{} {what}: no time counted", isa.name());
                };
                for ty in [DType::Q8_0, DType::Q4K, DType::Q5_0, DType::BF16] {
                    let [w1, w2] = [0; 2].map(|_| weight(&b, ty, rows, cols));
                    let what = format!("{ty:?}{}", if repack { "" } else { " (file layout)" });
                    expect(&format!("{what} linear"), one, &mut || {
                        b.linear(&x, &w1, None, &mut o1).unwrap()
                    });
                    expect(&format!("{what} linear_many"), 2 * one, &mut || {
                        b.linear_many(&x, &[(&w1, None), (&w2, None)], &mut [&mut o1, &mut o2])
                            .unwrap()
                    });
                    expect(&format!("{what} gated_linear"), 2 * one, &mut || {
                        b.gated_linear(&x, &w1, &w2, &mut o1, &mut o2, &mut o3)
                            .unwrap()
                    });
                }
            }
        }
    }
}
