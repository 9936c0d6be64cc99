//! Per-kernel throughput next to the machine's memory read bandwidth (the "membw" group):
//! matrix-vector products (decode) in GB/s of weights, matrix-matrix tiles (prefill) in GOP/s,
//! decode attention in GB/s of K/V. Matrices are sized to come from memory, not cache.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use suanli_backend::{AttnMeta, AttnSeq, Backend, HostTensor, KvDType, KvSpec, WeightRole};
use suanli_core::DType;
use suanli_cpu::CpuBackend;

fn threads() -> usize {
    std::env::var("THREADS").ok().and_then(|t| t.parse().ok()).unwrap_or(2)
}

/// Quantized rows with sane f16 scales.
fn weight(ty: DType, rows: usize, cols: usize) -> Vec<u8> {
    let rb = ty.row_bytes(cols).unwrap();
    let mut raw: Vec<u8> = (0..rb * rows).map(|i| (i * 7 % 251) as u8).collect();
    for blk in raw.chunks_exact_mut(ty.block_bytes()) {
        for &o in suanli_core::quant::f16_scale_offsets(ty) {
            blk[o..o + 2].copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
        }
    }
    raw
}

/// The reference the GB/s figures below are read against, printed first.
fn membw(_: &mut Criterion) {
    let b = CpuBackend::new(Some(threads())).unwrap();
    eprintln!(
        "memory read bandwidth: {:.1} GB/s ({}, {} threads); the decode rows below should come close",
        b.read_bandwidth(),
        b.isa().name(),
        threads()
    );
}

fn matmul(c: &mut Criterion) {
    let b = CpuBackend::new(Some(threads())).unwrap();
    // (type, cols) as in the two catalog models; rows for about 600 MB, so that one matrix
    // comes from memory even on machines with hundreds of MB of L3.
    for (ty, cols) in [
        (DType::Q8_0, 896),
        (DType::Q5_0, 896),
        (DType::Q6K, 4864),
        (DType::Q4K, 1024),
        (DType::Q4_1, 576),
    ] {
        let rows = 600_000_000 / ty.row_bytes(cols).unwrap() / 16 * 16;
        let raw = suanli_formats::Bytes::from_vec(weight(ty, rows, cols));
        let w = b
            .prepare_weight(HostTensor {
                name: "w",
                dtype: ty,
                rows,
                cols,
                bytes: &raw,
                role: WeightRole::Matrix,
            })
            .unwrap();
        let bytes = CpuBackend::weight_bytes(&w) as u64;
        let mut g = c.benchmark_group(format!("{ty} {rows}x{cols}"));
        g.sample_size(10);
        for n in [1usize, 64] {
            let mut x = b.alloc_act(n, cols).unwrap();
            let xs: Vec<f32> = (0..n * cols).map(|i| ((i % 17) as f32 - 8.0) / 8.0).collect();
            b.upload(&xs, n, &mut x).unwrap();
            let mut out = b.alloc_act(n, rows).unwrap();
            if n == 1 {
                g.throughput(Throughput::Bytes(bytes));
                g.bench_function("decode (bytes of weights)", |bench| {
                    bench.iter(|| b.linear(&x, &w, None, &mut out).unwrap())
                });
            } else {
                // Elements = operations (2 per multiply-add): criterion's "elem/s" reads as OP/s.
                g.throughput(Throughput::Elements((2 * rows * cols * n) as u64));
                g.bench_function("prefill 64 tokens (ops)", |bench| {
                    bench.iter(|| b.linear(&x, &w, None, &mut out).unwrap())
                });
            }
        }
        g.finish();
    }
}

fn attention(c: &mut Criterion) {
    let b = CpuBackend::new(Some(threads())).unwrap();
    let (nh, nkv, hd, ctx) = (14, 2, 64, 4096);
    let mut g = c.benchmark_group("attention decode, ctx 4096, Qwen2.5-0.5B heads");
    g.sample_size(20);
    for (dtype, elem) in [(KvDType::F16, 2.0), (KvDType::Q8_0, 34.0 / 32.0)] {
        let spec = KvSpec {
            dtype,
            n_layers: 1,
            num_blocks: ctx / 16,
            block_size: 16,
            n_kv_heads: nkv,
            head_dim: hd,
        };
        let mut kv = b.alloc_kv(spec).unwrap();
        let kvd = nkv * hd;
        let vals: Vec<f32> = (0..ctx * kvd).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
        let mut k = b.alloc_act(ctx, kvd).unwrap();
        b.upload(&vals, ctx, &mut k).unwrap();
        let slots: Vec<u32> = (0..ctx as u32).collect();
        b.write_kv(&k, &k, &slots, &mut kv, 0).unwrap();
        let seqs = [AttnSeq {
            q_start: 0,
            q_len: 1,
            ctx_len: ctx,
            block_table: (0..(ctx / 16) as u32).collect(),
        }];
        let meta = AttnMeta {
            seqs: &seqs,
            n_heads: nh,
            n_kv_heads: nkv,
            head_dim: hd,
            scale: 0.125,
        };
        let mut q = b.alloc_act(1, nh * hd).unwrap();
        b.upload(&vec![0.1; nh * hd], 1, &mut q).unwrap();
        let mut out = b.alloc_act(1, nh * hd).unwrap();
        g.throughput(Throughput::Bytes(((2 * ctx * kvd) as f64 * elem) as u64));
        g.bench_function(format!("{dtype:?} (bytes of K/V)"), |bench| {
            bench.iter(|| b.attention(&q, &kv, &meta, 0, &mut out).unwrap())
        });
    }
    g.finish();
}

/// One round trip through the thread pool (publish a job, every thread runs it, wait): what
/// each matrix product pays on top of its work.
fn pool(c: &mut Criterion) {
    let p = suanli_cpu::pool::Pool::new(threads()).unwrap();
    let mut g = c.benchmark_group("pool");
    g.bench_function("run (empty job, all threads)", |bench| {
        bench.iter(|| p.run(&|i, _| {
            std::hint::black_box(i);
        }))
    });
    g.finish();
}

criterion_group!(benches, membw, pool, matmul, attention);
criterion_main!(benches);
