//! Single-product probe for kernel work: G multiply-adds/s of one quantized matrix product.
//!   cargo run --release -p suanli-cpu --example matmul_probe -- TYPE ROWS COLS TOKENS [THREADS]
//! `COPIES=N` cycles through N copies of the weight, so that a small batch streams it from
//! memory as decode steps do (one copy stays in cache after the first run); `NS=1,2,4` alternates
//! token counts product by product, each on the next copy (TOKENS is then ignored); `REPS=N` times N
//! products per copy (20 by default) and keeps the best. `GENERATED=1` multiplies the rows as
//! generated tokens rather than a prompt's (BF16/F16 weights: the f32 tiles rather than AMX).
use suanli_backend::{Backend, HostTensor, WeightRole};
use suanli_core::DType;
use suanli_cpu::CpuBackend;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let ty: DType = match a.get(1).map(|s| s.as_str()).unwrap_or("q4_k") {
        "q4_0" => DType::Q4_0,
        "q5_0" => DType::Q5_0,
        "q8_0" => DType::Q8_0,
        "q6_k" => DType::Q6K,
        "q4_1" => DType::Q4_1,
        "q5_k" => DType::Q5K,
        "q5_1" => DType::Q5_1,
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        _ => DType::Q4K,
    };
    let num = |i: usize, d: usize| a.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let (rows, cols, n, th) = (num(2, 4864), num(3, 896), num(4, 512), num(5, 1));
    let b = CpuBackend::new(Some(th)).unwrap();
    let rb = ty.row_bytes(cols).unwrap();
    let mut raw: Vec<u8> = (0..rb * rows).map(|i| (i * 7 % 251) as u8).collect();
    // Float weights get normal values (random bytes would hold denormals, NaN and infinity).
    let v = |i: usize| ((i * 7919 % 2003) as f32 - 1001.0) / 1001.0;
    match ty {
        DType::BF16 => (0..rows * cols).for_each(|i| {
            raw[2 * i..2 * i + 2].copy_from_slice(&half::bf16::from_f32(v(i)).to_le_bytes())
        }),
        DType::F16 => (0..rows * cols).for_each(|i| {
            raw[2 * i..2 * i + 2].copy_from_slice(&half::f16::from_f32(v(i)).to_le_bytes())
        }),
        _ => {}
    }
    for blk in raw
        .chunks_exact_mut(ty.block_bytes())
        .filter(|_| ty.block_elems() > 1)
    {
        for &o in suanli_core::quant::f16_scale_offsets(ty) {
            blk[o..o + 2].copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
        }
    }
    let raw = suanli_formats::Bytes::from_vec(raw);
    let copies: usize = std::env::var("COPIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let prep = || {
        b.prepare_weight(HostTensor {
            name: "w",
            dtype: ty,
            rows,
            cols,
            bytes: &raw,
            role: WeightRole::Matrix,
            precision: suanli_backend::ActPrecision::Fast,
        })
        .unwrap()
    };
    let ws: Vec<_> = (0..copies.max(1)).map(|_| prep()).collect();
    // The input of k tokens and its output.
    let operands = |k: usize| {
        let mut x = b.alloc_act(k, cols).unwrap();
        let xs: Vec<f32> = (0..k * cols)
            .map(|i| ((i % 17) as f32 - 8.0) / 8.0)
            .collect();
        b.upload(&xs, k, &mut x).unwrap();
        (x, b.alloc_act(k, rows).unwrap())
    };
    // REPS: products timed per copy.
    let reps: usize = std::env::var("REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    // Wall time and this process's CPU time (which a shared machine's steal does not inflate).
    let cpu = || {
        let mut ts = [0i64; 2];
        // SAFETY: clock_gettime writes one timespec.
        unsafe { clock_gettime(2, ts.as_mut_ptr()) };
        ts[0] as f64 + ts[1] as f64 * 1e-9
    };
    // The rows are a prompt's (`GENERATED=1`: generated tokens'), which decides where BF16
    // and F16 products run at the `amx` level.
    let generated = std::env::var("GENERATED").is_ok_and(|v| v == "1");
    let seqs = [suanli_backend::AttnSeq {
        q_start: 0,
        q_len: n,
        ctx_len: n,
        block_table: Vec::new(),
        generated_from: if generated { 0 } else { usize::MAX },
    }];
    b.step_rows(Some((&seqs, n)));
    // NS=1,2,4: the products alternate between these token counts, one after another over the
    // streamed copies, and the mean time of each is printed (in-process pairs: a shared
    // machine's speed moves between runs by more than small batches differ).
    if let Ok(ns) = std::env::var("NS") {
        let ns: Vec<usize> = ns
            .split(',')
            .map(|v| v.parse().expect("NS: counts"))
            .collect();
        let mut acts: Vec<_> = ns.iter().map(|&k| operands(k)).collect();
        let mut secs = vec![0f64; ns.len()];
        // Each product reads the copy after the last one's, never the one just read (which
        // would be in cache for the next count).
        for i in 0..reps * ws.len() * ns.len() {
            let j = i % ns.len();
            let (x, out) = &mut acts[j];
            let t = std::time::Instant::now();
            b.linear(x, &ws[i % ws.len()], None, out).unwrap();
            secs[j] += t.elapsed().as_secs_f64();
        }
        let per = (reps * ws.len()) as f64;
        for (k, s) in ns.iter().zip(&secs) {
            println!(
                "{ty} {rows}x{cols} x {k} tokens, {th} threads: {:.1} µs a product ({:.2} of {} tokens'), {:.1} G MAC/s",
                s / per * 1e6,
                s / secs[0],
                ns[0],
                (rows * cols * k) as f64 * per / s / 1e9
            );
        }
        return;
    }
    let (x, mut out) = operands(n);
    // The best of the products is kept.
    let (mut best, mut best_cpu) = (0f64, 0f64);
    let macs = (rows * cols * n) as f64;
    let start = std::time::Instant::now();
    for i in 0..reps * ws.len() {
        let (t, c) = (std::time::Instant::now(), cpu());
        b.linear(&x, &ws[i % ws.len()], None, &mut out).unwrap();
        best = best.max(macs / t.elapsed().as_secs_f64());
        best_cpu = best_cpu.max(macs / (cpu() - c) * th as f64);
    }
    // The mean over every product, as a model's pass meets them (the best flatters small ones).
    let mean = macs * (reps * ws.len()) as f64 / start.elapsed().as_secs_f64();
    println!(
        "{ty} {rows}x{cols} x {n} tokens, {th} threads, {}: {:.1} G MAC/s wall (best; mean {:.1}), {:.1} per CPU time",
        b.isa().name(),
        best / 1e9,
        mean / 1e9,
        best_cpu / 1e9
    );
}

extern "C" {
    fn clock_gettime(clock: i32, ts: *mut i64) -> i32;
}
