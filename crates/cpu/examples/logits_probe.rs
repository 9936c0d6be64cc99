//! Logits probe: the head product of ROWS rows over a Q8_0 head of VOCAB × COLS, with and
//! without recomputing each row's top candidates in f32 (`ActPrecision::ExactTop`), best of
//! `REPS` (20) after one warm-up, in ms; and each row's best logit with them (`top_logits`).
//!   cargo run --release -p suanli-cpu --example logits_probe -- [ROWS VOCAB COLS THREADS]
use suanli_backend::{ActPrecision, Backend, HostTensor, WeightRole};
use suanli_core::DType;
use suanli_cpu::CpuBackend;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let num = |i: usize, d: usize| a.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let (rows, vocab, cols, th) = (num(1, 1), num(2, 151936), num(3, 896), num(4, 2));
    let reps: usize = std::env::var("REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let b = CpuBackend::new(Some(th)).unwrap();
    let ty = DType::Q8_0;
    let rb = ty.row_bytes(cols).unwrap();
    let mut raw: Vec<u8> = (0..rb * vocab).map(|i| (i * 7 % 251) as u8).collect();
    for blk in raw.chunks_exact_mut(ty.block_bytes()) {
        for &o in suanli_core::quant::f16_scale_offsets(ty) {
            blk[o..o + 2].copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
        }
    }
    let raw = suanli_formats::Bytes::from_vec(raw);
    let x: Vec<f32> = (0..rows * cols)
        .map(|i| ((i * 7919 % 2003) as f32 - 1001.0) / 1001.0)
        .collect();
    let mut xa = b.alloc_act(rows, cols).unwrap();
    b.upload(&x, rows, &mut xa).unwrap();
    let ids: Vec<u32> = (0..rows as u32).collect();
    let mut out = vec![0f32; rows * vocab];
    let mut times = Vec::new();
    for precision in [ActPrecision::Fast, ActPrecision::ExactTop] {
        let w = b
            .prepare_weight(HostTensor {
                name: "output.weight",
                dtype: ty,
                rows: vocab,
                cols,
                bytes: &raw,
                role: WeightRole::Matrix,
                precision,
            })
            .unwrap();
        let mut best = f64::MAX;
        for _ in 0..=reps {
            let t = std::time::Instant::now();
            b.logits(&xa, &ids, &w, &mut out).unwrap();
            best = best.min(t.elapsed().as_secs_f64() * 1e3);
        }
        times.push(best);
        if precision == ActPrecision::ExactTop {
            // Greedy rows' single best (`Backend::top_logits` with k = 1), the selection too.
            let mut best = f64::MAX;
            for _ in 0..=reps {
                let t = std::time::Instant::now();
                b.top_logits(&xa, &ids, &w, 1, false).unwrap().unwrap();
                best = best.min(t.elapsed().as_secs_f64() * 1e3);
            }
            times.push(best);
        }
    }
    println!(
        "logits of {rows} rows, Q8_0 {vocab}x{cols}, {th} threads, {}: {:.3} ms fast, {:.3} ms with the top candidates in f32 (+{:.3}), {:.3} ms for each row's best (+{:.3})",
        b.isa().name(),
        times[0],
        times[1],
        times[1] - times[0],
        times[2],
        times[2] - times[1]
    );
}
