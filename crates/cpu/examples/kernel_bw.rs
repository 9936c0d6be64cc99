//! Quick throughput check of the matrix-vector path: GB/s of weights streamed per ISA level.
//! `cargo run --release -p suanli-cpu --example kernel_bw`

use std::time::Instant;
use suanli_backend::{Backend, HostTensor, WeightRole};
use suanli_core::DType;
use suanli_cpu::kernels::Isa;
use suanli_cpu::CpuBackend;
use suanli_formats::Bytes;

fn main() {
    let threads: usize = std::env::var("THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(2);
    for (ty, rows, cols) in [
        (DType::Q5_0, 4864, 896),
        (DType::Q8_0, 151936, 896),
        (DType::Q4K, 4864, 1024),
        (DType::Q6K, 896, 4864),
        (DType::Q4_1, 1536, 576),
    ] {
        let rb = ty.row_bytes(cols).unwrap();
        let mut raw = vec![0u8; rb * rows];
        for (i, b) in raw.iter_mut().enumerate() {
            *b = (i * 7 % 251) as u8;
        }
        for blk in raw.chunks_exact_mut(ty.block_bytes()) {
            for &o in suanli_core::quant::f16_scale_offsets(ty) {
                blk[o..o + 2].copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
            }
        }
        let bytes = Bytes::from_vec(raw);
        for isa in Isa::available() {
            let b = CpuBackend::with_isa(Some(threads), isa).unwrap();
            let w = b
                .prepare_weight(HostTensor {
                    name: "w",
                    dtype: ty,
                    rows,
                    cols,
                    bytes: &bytes,
                    role: WeightRole::Matrix,
                })
                .unwrap();
            let mut x = b.alloc_act(1, cols).unwrap();
            b.upload(&vec![0.5; cols], 1, &mut x).unwrap();
            let mut out = b.alloc_act(1, rows).unwrap();
            let reps = (2_000_000_000 / bytes.len()).clamp(3, 2000);
            b.linear(&x, &w, None, &mut out).unwrap();
            let t0 = Instant::now();
            for _ in 0..reps {
                b.linear(&x, &w, None, &mut out).unwrap();
            }
            let dt = t0.elapsed().as_secs_f64() / reps as f64;
            println!(
                "{ty:5} {rows:6}x{cols:<5} {:>10}: {:6.1} GB/s  {:8.1} µs/call",
                isa.name(),
                bytes.len() as f64 / dt / 1e9,
                dt * 1e6
            );
        }
    }
}
