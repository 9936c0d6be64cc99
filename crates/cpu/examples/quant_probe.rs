//! Activation quantizer probe: ns per 32-value block of `PActs::fill` (one thread).
//!   cargo run --release -p suanli-cpu --example quant_probe -- TOKENS WIDTH
use suanli_cpu::kernels::pacts::PActs;
use suanli_cpu::pool::Pool;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let num = |i: usize, d: usize| a.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let (n, k) = (num(1, 512), num(2, 896));
    let pool = Pool::new(1).unwrap();
    let x: Vec<f32> = (0..n * k)
        .map(|i| ((i as f32 * 0.37).sin() * 3.0).powi(3))
        .collect();
    let mut p = PActs::default();
    let mut best = f64::MAX;
    for _ in 0..50 {
        let t = std::time::Instant::now();
        p.fill(&pool, &x, n, k, false);
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!(
        "{n} tokens × {k}: {:.2} ns per block (best of 50)",
        best * 1e9 / (n * k / 32) as f64
    );
}
