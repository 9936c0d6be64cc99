//! Decode attention at a given context length: µs per layer call and K/V GB/s.
//! `cargo run --release -p suanli-cpu --example attn_bench [ctx]`

use std::time::Instant;
use suanli_backend::{AttnMeta, AttnSeq, Backend, KvDType, KvSpec};
use suanli_cpu::CpuBackend;

fn main() {
    let ctx: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(4096);
    let threads = std::env::var("THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(2);
    let (nh, nkv, hd) = (14, 2, 64);
    let blocks = ctx.div_ceil(16);
    let b = CpuBackend::new(Some(threads)).unwrap();
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
    let vals: Vec<f32> = (0..ctx * kvd)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    let mut k = b.alloc_act(ctx, kvd).unwrap();
    b.upload(&vals, ctx, &mut k).unwrap();
    let slots: Vec<u32> = (0..ctx as u32).collect();
    b.write_kv(&k, &k, &slots, &mut kv, 0).unwrap();
    let seqs = [AttnSeq {
        q_start: 0,
        q_len: 1,
        ctx_len: ctx,
        block_table: (0..blocks as u32).collect(),
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
    let reps = 200;
    b.attention(&q, &kv, &meta, 0, &mut out).unwrap();
    let t0 = Instant::now();
    for _ in 0..reps {
        b.attention(&q, &kv, &meta, 0, &mut out).unwrap();
    }
    let dt = t0.elapsed().as_secs_f64() / reps as f64;
    println!(
        "ctx {ctx}: {:.1} µs per layer, {:.1} GB/s of K/V ({})",
        dt * 1e6,
        (2 * ctx * kvd * 2) as f64 / dt / 1e9,
        b.caps().detail
    );
}
