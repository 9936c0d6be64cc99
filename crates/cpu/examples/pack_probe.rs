//! Load-time probe: milliseconds to repack ROWS × COLS of each weight type into the kernels'
//! layout (`Packed::pack`), best of REPS (5), on THREADS threads.
//!   cargo run --release -p suanli-cpu --example pack_probe -- [ROWS COLS THREADS]
use std::time::Instant;
use suanli_core::DType;
use suanli_cpu::packed::Packed;
use suanli_cpu::pool::Pool;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let num = |i: usize, d: usize| a.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let (rows, cols, th) = (num(1, 8960), num(2, 1536), num(3, 2));
    let reps: usize = std::env::var("REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let pool = Pool::new(th).unwrap();
    for ty in [
        DType::Q4_0,
        DType::Q4_1,
        DType::Q5_0,
        DType::Q8_0,
        DType::Q4K,
        DType::Q5K,
        DType::Q6K,
    ] {
        let rb = ty.row_bytes(cols).unwrap();
        let raw: Vec<u8> = (0..rb * rows).map(|i| (i * 7 % 251) as u8).collect();
        let mut best = f64::MAX;
        for _ in 0..reps {
            let t = Instant::now();
            let p = Packed::pack(ty, &raw, rows, cols, &pool).unwrap();
            best = best.min(t.elapsed().as_secs_f64());
            std::hint::black_box(&p);
        }
        let mb = (rb * rows) as f64 / 1e6;
        println!(
            "{ty:?} {rows}x{cols}: {:.1} ms ({:.0} MB/s of the file's bytes)",
            best * 1e3,
            mb / best
        );
    }
}
