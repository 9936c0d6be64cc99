//! `bench --parallel N`: aggregate decode throughput of N sequences generating at once through
//! the continuous-batching engine (what a server under load gets), after their prompts are in.

use anyhow::{anyhow, Result};
use std::time::Instant;
use suanli_backend::{Backend, KvDType};
use suanli_engine::batch::{BatchEngine, Event, Request};
use suanli_engine::scheduler::SchedConfig;
use suanli_engine::SamplingParams;
use suanli_models::Model;

pub struct Aggregate {
    /// Tokens per second over all sequences, once every sequence is decoding.
    pub tok_s: f64,
    /// Seconds until every sequence had its first token (prompts prefilled together).
    pub prefill_s: f64,
    pub prompt: usize,
}

pub fn aggregate_decode<B: Backend>(
    backend: B,
    model: Model<B>,
    n: usize,
    prompt: usize,
    gen: usize,
    kv: KvDType,
    (temperature, top_k, top_p): (f32, usize, f32),
) -> Result<Aggregate> {
    let block = 16;
    let per_seq = (prompt + gen + 1).div_ceil(block) + 1;
    let cfg = SchedConfig {
        max_batch: n,
        max_step_tokens: (n * prompt).clamp(512, 8192),
        max_queue: n,
        block_size: block,
        num_blocks: n * per_seq,
        max_ctx: prompt + gen + 1,
    };
    let vocab = model.vocab_size() as u64;
    // No end-of-generation ids: every sequence runs its full length.
    let mut e = BatchEngine::new(backend, model, cfg, kv, Vec::new())
        .map_err(|e| anyhow!("allocating the KV cache: {e}"))?;
    for id in 0..n as u64 {
        let p: Vec<u32> = (0..prompt as u64)
            .map(|i| ((i * 7919 + id * 104_729 + 13) % vocab) as u32)
            .collect();
        let req = Request {
            prompt: p,
            // Greedy, or a seeded draw with only temperature, top-k and top-p set (no min-p).
            params: SamplingParams {
                temperature,
                top_k,
                top_p,
                min_p: 0.0,
                seed: Some(id),
                ..SamplingParams::default()
            },
            max_tokens: gen,
            logprobs: None,
            prompt_logprobs: None,
            constraint: None,
        };
        e.submit(id, req).map_err(|e| anyhow!("{e:?}"))?;
    }
    let t0 = Instant::now();
    let (mut started, mut done, mut tokens_after) = (vec![false; n], 0usize, 0usize);
    let mut t1 = None;
    while done < n {
        let events = e.step().map_err(|e| anyhow!("{e}"))?;
        if events.is_empty() && e.active() == 0 {
            break;
        }
        for (id, ev) in events {
            match ev {
                Event::Token { .. } => {
                    if t1.is_some() {
                        tokens_after += 1;
                    }
                    started[id as usize] = true;
                }
                Event::Done { .. } => done += 1,
                Event::Failed(m) => return Err(anyhow!("sequence {id} failed: {m}")),
                _ => {}
            }
        }
        if t1.is_none() && started.iter().all(|&s| s) {
            t1 = Some(Instant::now());
        }
    }
    let t1 = t1.ok_or_else(|| anyhow!("the sequences never all started"))?;
    Ok(Aggregate {
        tok_s: tokens_after as f64 / t1.elapsed().as_secs_f64(),
        prefill_s: (t1 - t0).as_secs_f64(),
        prompt,
    })
}
