//! Prefill attention probe for kernel work: one layer's attention of TOKENS new tokens after
//! DEPTH cached ones (F16 cache), G multiply-adds/s (Q·K and P·V) of the best of 10 runs.
//!   cargo run --release -p suanli-cpu --example attention_probe -- DEPTH TOKENS [HEADS KV_HEADS HEAD_DIM THREADS]
//! (`SUANLI_CPU_ISA` picks the level; the output's hash shows whether a change kept its bits.)
use suanli_backend::{AttnMeta, AttnSeq, Backend, KvDType, KvSpec};
use suanli_cpu::CpuBackend;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let num = |i: usize, d: usize| a.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let (depth, n) = (num(1, 4096), num(2, 512));
    let (nh, nkv, hd, th) = (num(3, 14), num(4, 2), num(5, 64), num(6, 1));
    let b = CpuBackend::new(Some(th)).unwrap();
    let ctx = depth + n;
    let blocks = ctx.div_ceil(16);
    let spec = KvSpec {
        dtype: KvDType::F16,
        n_layers: 1,
        num_blocks: blocks,
        block_size: 16,
        n_kv_heads: nkv,
        head_dim: hd,
    };
    let mut kv = b.alloc_kv(spec).unwrap();
    let kvd = nkv * hd;
    let val = |i: usize| ((i * 7919 % 1021) as f32 - 510.0) / 400.0;
    let (mut ka, mut va) = (
        b.alloc_act(ctx, kvd).unwrap(),
        b.alloc_act(ctx, kvd).unwrap(),
    );
    let k: Vec<f32> = (0..ctx * kvd).map(val).collect();
    let v: Vec<f32> = (0..ctx * kvd).map(|i| val(i + 3)).collect();
    b.upload(&k, ctx, &mut ka).unwrap();
    b.upload(&v, ctx, &mut va).unwrap();
    let slots: Vec<u32> = (0..ctx as u32).collect();
    b.write_kv(&ka, &va, &slots, &mut kv, 0).unwrap();
    let q: Vec<f32> = (0..n * nh * hd).map(|i| val(i + 11)).collect();
    let mut qa = b.alloc_act(n, nh * hd).unwrap();
    b.upload(&q, n, &mut qa).unwrap();
    let mut out = b.alloc_act(n, nh * hd).unwrap();
    let seqs = [AttnSeq {
        q_start: 0,
        q_len: n,
        ctx_len: ctx,
        block_table: (0..blocks as u32).collect(),
        generated_from: usize::MAX,
    }];
    let meta = AttnMeta {
        window: None,
        seqs: &seqs,
        n_heads: nh,
        n_kv_heads: nkv,
        head_dim: hd,
        scale: 1.0 / (hd as f32).sqrt(),
    };
    // Q·K and P·V: 2 · heads · head size per attended position.
    let positions: usize = (0..n).map(|i| depth + i + 1).sum();
    let macs = (2 * nh * hd * positions) as f64;
    // Wall time and this process's CPU time (which a shared machine's steal does not inflate).
    let cpu = || {
        let mut ts = [0i64; 2];
        // SAFETY: clock_gettime writes one timespec.
        unsafe { clock_gettime(2, ts.as_mut_ptr()) };
        ts[0] as f64 + ts[1] as f64 * 1e-9
    };
    let (mut best, mut best_cpu) = (0f64, 0f64);
    let runs = std::env::var("RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    for _ in 0..runs {
        let (t, c) = (std::time::Instant::now(), cpu());
        b.attention(&qa, &kv, &meta, 0, &mut out).unwrap();
        best = best.max(macs / t.elapsed().as_secs_f64());
        best_cpu = best_cpu.max(macs / (cpu() - c) * th as f64);
    }
    println!(
        "attention {nh}/{nkv}×{hd}, {n} tokens after {depth}, {th} threads, {}: {:.1} G MAC/s wall ({:.2} ms), {:.1} per CPU time",
        b.isa().name(),
        best / 1e9,
        macs / best * 1e3,
        best_cpu / 1e9
    );
    // The output's bits, hashed (FNV-1a): a kernel change that should keep them can be checked.
    let bits = b.download(&out).unwrap();
    let hash = bits.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, v| {
        (h ^ v.to_bits() as u64).wrapping_mul(0x0100_0000_01b3)
    });
    println!("output hash {hash:016x}");
}

extern "C" {
    fn clock_gettime(clock: i32, ts: *mut i64) -> i32;
}
