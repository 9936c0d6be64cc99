//! The scheduler against a fake model whose next token is a hash of the context it reads back
//! through the block tables from a fake KV cache: a wrong block table, a stale shared block or a
//! lost token after preemption changes the answer, which must equal the one computed alone.

use super::*;
use std::collections::HashSet;

struct FakeModel {
    block_size: usize,
    /// slot → token whose K/V the slot holds.
    kv: HashMap<u32, u32>,
    computed: usize,
    /// Sliding window: the next token depends on (and reads) only the last `window` positions.
    window: Option<usize>,
}

/// FNV-1a of the context: deterministic, unlike the scheduler's keyed hash.
fn next_token(ctx: &[u32]) -> u32 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ 7;
    for b in ctx.iter().flat_map(|t| t.to_le_bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    (h % 1000) as u32 + 1
}

impl FakeModel {
    fn new(block_size: usize) -> FakeModel {
        FakeModel {
            block_size,
            kv: HashMap::new(),
            computed: 0,
            window: None,
        }
    }

    fn slot(&self, table: &[u32], pos: usize) -> u32 {
        table[pos / self.block_size] * self.block_size as u32 + (pos % self.block_size) as u32
    }

    /// Each sampling sequence's new tokens: the drafts that equal what the model predicts at
    /// their position, then the model's next token after them.
    fn run(&mut self, step: &Step) -> Vec<(SeqId, Vec<u32>)> {
        // The plan the real model would get must agree with the items.
        let plan = step.plan(self.block_size);
        assert_eq!(plan.tokens.len(), step.n_tokens());
        let mut out = Vec::new();
        for it in &step.items {
            for (i, &t) in it.tokens.iter().enumerate() {
                let s = self.slot(&it.block_table, it.start + i);
                self.kv.insert(s, t);
            }
            self.computed += it.tokens.len();
            if it.sample {
                let last = it.start + it.tokens.len() - it.draft;
                let mut new = Vec::new();
                for end in last..=last + it.draft {
                    let from = self.window.map_or(0, |w| end.saturating_sub(w));
                    let ctx: Vec<u32> = (from..end)
                        .map(|p| self.kv[&self.slot(&it.block_table, p)])
                        .collect();
                    let t = next_token(&ctx);
                    new.push(t);
                    // The draft at position `end` (if any) must be what the model predicts.
                    if end == last + it.draft || it.tokens[end - it.start] != t {
                        break;
                    }
                }
                out.push((it.seq, new));
            }
        }
        out
    }
}

fn cfg(num_blocks: usize) -> SchedConfig {
    SchedConfig {
        max_batch: 4,
        max_step_tokens: 24,
        max_queue: 16,
        block_size: 8,
        num_blocks,
        max_ctx: 256,
    }
}

/// Run requests `(prompt, max_new)` to completion; returns each generation and the steps taken.
fn serve(c: SchedConfig, reqs: &[(Vec<u32>, usize)]) -> (Vec<Vec<u32>>, Vec<Step>, Scheduler) {
    serve_windowed(c, reqs, None)
}

/// `serve` for a model whose every layer sees only the last `window` positions.
fn serve_windowed(
    c: SchedConfig,
    reqs: &[(Vec<u32>, usize)],
    window: Option<usize>,
) -> (Vec<Vec<u32>>, Vec<Step>, Scheduler) {
    let mut s = Scheduler::new(c.clone());
    s.set_window(window);
    let mut m = FakeModel::new(c.block_size);
    m.window = window;
    serve_on(s, &mut m, c, reqs)
}

/// `serve_windowed` on a scheduler set up by the caller.
fn serve_on(
    mut s: Scheduler,
    m: &mut FakeModel,
    c: SchedConfig,
    reqs: &[(Vec<u32>, usize)],
) -> (Vec<Vec<u32>>, Vec<Step>, Scheduler) {
    let mut out = vec![Vec::new(); reqs.len()];
    for (i, (p, n)) in reqs.iter().enumerate() {
        s.submit(i as u64, p.clone(), *n).unwrap();
    }
    let mut steps = Vec::new();
    let mut done = 0;
    while done < reqs.len() {
        let step = s.schedule();
        assert!(!step.is_empty(), "no progress with work pending");
        assert!(step.n_tokens() <= c.max_step_tokens && step.items.len() <= c.max_batch);
        let sampled = m.run(&step);
        s.complete(&step, &sampled);
        for (id, new) in sampled {
            let o = &mut out[id as usize];
            o.extend(new);
            let n = reqs[id as usize].1;
            if o.len() >= n {
                o.truncate(n);
                assert!(s.finish(id));
                done += 1;
            }
        }
        steps.push(step);
        assert!(steps.len() < 10_000);
    }
    (out, steps, s)
}

fn prompt(len: usize, seed: u32) -> Vec<u32> {
    (0..len as u32)
        .map(|i| (i * 31 + seed * 7) % 500 + 1)
        .collect()
}

fn alone(p: &[u32], n: usize) -> Vec<u32> {
    let mut ctx = p.to_vec();
    let mut out = Vec::new();
    for _ in 0..n {
        let t = next_token(&ctx);
        out.push(t);
        ctx.push(t);
    }
    out
}

/// `alone` for a windowed model.
fn alone_windowed(p: &[u32], n: usize, w: usize) -> Vec<u32> {
    let mut ctx = p.to_vec();
    let mut out = Vec::new();
    for _ in 0..n {
        let t = next_token(&ctx[ctx.len().saturating_sub(w)..]);
        out.push(t);
        ctx.push(t);
    }
    out
}

/// With a sliding window on every layer, blocks before a sequence's window are given back as
/// it advances: four sequences of 120-160 tokens each run together in a cache of 24 blocks
/// (192 positions), get the answers they get alone, and leave no block behind.
#[test]
fn blocks_outside_every_window_are_freed() {
    let w = 20;
    let reqs: Vec<(Vec<u32>, usize)> = (0..4)
        .map(|i| (prompt(70 + 13 * i, i as u32), 50))
        .collect();
    let c = cfg(24);
    // Without the window such requests cannot even be queued in this cache.
    let mut plain = Scheduler::new(c.clone());
    assert!(matches!(
        plain.submit(0, prompt(200, 0), 10),
        Err(SubmitError::TooBig { .. })
    ));
    let (out, steps, s) = serve_windowed(c, &reqs, Some(w));
    for (i, (p, n)) in reqs.iter().enumerate() {
        assert_eq!(out[i], alone_windowed(p, *n, w), "request {i}");
    }
    assert!(s.window_freed() > 0);
    assert_eq!(
        s.preemptions(),
        0,
        "the window keeps every sequence's share small"
    );
    // Several sequences decoded in the same step: they were resident together.
    assert!(steps.iter().any(|st| st.items.len() == 4));
    assert_eq!(s.running() + s.waiting(), 0);
    assert_eq!(s.blocks_used(), s.blocks_cached_idle());
}

#[test]
fn batched_answers_equal_answers_alone() {
    let reqs: Vec<(Vec<u32>, usize)> = (0..7)
        .map(|i| (prompt(5 + 9 * i, i as u32), 3 + i))
        .collect();
    let (out, _, s) = serve(cfg(64), &reqs);
    for (i, (p, n)) in reqs.iter().enumerate() {
        assert_eq!(out[i], alone(p, *n), "request {i}");
    }
    assert_eq!(s.running() + s.waiting(), 0);
    // Only idle prefix-cache blocks remain.
    assert_eq!(s.blocks_used(), s.blocks_cached_idle());
}

#[test]
fn long_prompts_are_chunked_and_never_stall_decoding() {
    let reqs = vec![(prompt(6, 1), 30), (prompt(200, 2), 2)];
    let (out, steps, _) = serve(cfg(64), &reqs);
    assert_eq!(out[1], alone(&reqs[1].0, 2));
    // Once request 0 decodes, every step until it finishes carries its token.
    let first = steps
        .iter()
        .position(|s| s.items.iter().any(|i| i.seq == 0 && i.tokens.len() == 1))
        .unwrap();
    for s in &steps[first..first + 20] {
        assert!(
            s.items.iter().any(|i| i.seq == 0),
            "request 0 skipped a step"
        );
    }
    // The long prompt took several steps.
    assert!(
        steps
            .iter()
            .filter(|s| s.items.iter().any(|i| i.seq == 1 && i.tokens.len() > 1))
            .count()
            >= 8
    );
}

#[test]
fn shared_prefixes_are_computed_once() {
    let base = prompt(40, 3);
    let mut other = base.clone();
    other.extend([9, 9, 9]);
    let c = cfg(64);
    let mut s = Scheduler::new(c.clone());
    let mut m = FakeModel::new(c.block_size);
    s.submit(0, base.clone(), 2).unwrap();
    // Run the first to completion.
    let mut got0 = Vec::new();
    while got0.len() < 2 {
        let st = s.schedule();
        let sm = m.run(&st);
        s.complete(&st, &sm);
        got0.extend(sm.iter().flat_map(|x| x.1.clone()));
    }
    s.finish(0);
    let before = m.computed;
    s.submit(1, other.clone(), 2).unwrap();
    let mut got1 = Vec::new();
    let mut cached = 0;
    while got1.len() < 2 {
        let st = s.schedule();
        let sm = m.run(&st);
        for p in s.complete(&st, &sm) {
            cached = p.cached_prompt_tokens;
        }
        got1.extend(sm.iter().flat_map(|x| x.1.clone()));
    }
    assert_eq!(got0, alone(&base, 2));
    assert_eq!(got1, alone(&other, 2));
    // 40 shared tokens = 5 full blocks of 8.
    assert_eq!(cached, 40);
    assert_eq!(m.computed - before, other.len() - 40 + 1);
    assert_eq!(s.prefix_hits(), 1);
}

/// What a router learns from the events: the cached blocks, each checked against the chain.
#[derive(Default)]
struct Mirror {
    blocks: HashSet<BlockHash>,
    stored: usize,
    removed: usize,
}

impl Mirror {
    fn apply(&mut self, hasher: &BlockHasher, bs: usize, events: Vec<KvEvent>) {
        for e in events {
            match e {
                KvEvent::Stored {
                    hashes,
                    parent,
                    tokens,
                } => {
                    assert_eq!(tokens.len(), hashes.len() * bs);
                    let mut prev = parent;
                    for (h, block) in hashes.iter().zip(tokens.chunks_exact(bs)) {
                        assert_eq!(*h, hasher.hash(prev.as_ref(), block), "not vLLM's chain");
                        assert!(self.blocks.insert(*h), "stored twice");
                        prev = Some(*h);
                    }
                    self.stored += hashes.len();
                }
                KvEvent::Removed { hashes } => {
                    for h in &hashes {
                        assert!(self.blocks.remove(h), "removed a block never stored");
                    }
                    self.removed += hashes.len();
                }
                KvEvent::AllCleared => self.blocks.clear(),
            }
        }
    }
}

#[test]
fn kv_events_mirror_the_prefix_cache_exactly() {
    // Prompts sharing starts, through a cache too small to keep them all: blocks are stored,
    // shared and evicted. A mirror built from the events alone must equal the cache.
    let c = cfg(24);
    let hasher = BlockHasher::seeded("0");
    let mut s = Scheduler::new(c.clone());
    s.enable_kv_events(hasher.clone());
    let mut m = FakeModel::new(c.block_size);
    let mut mirror = Mirror::default();
    let mut reqs = Vec::new();
    for i in 0..12u32 {
        let mut p = prompt(24 + 8 * (i as usize % 3), i % 4);
        p.extend(prompt(5 + i as usize, 100 + i));
        reqs.push((p, 6));
    }
    for chunk in reqs.chunks(3) {
        let (out, _, back) = serve_on(s, &mut m, c.clone(), chunk);
        s = back;
        for (o, (p, n)) in out.iter().zip(chunk) {
            assert_eq!(*o, alone(p, *n));
        }
        mirror.apply(&hasher, c.block_size, s.take_kv_events());
        let cached: HashSet<BlockHash> = s
            .events
            .as_ref()
            .unwrap()
            .hashes
            .values()
            .copied()
            .collect();
        assert_eq!(mirror.blocks, cached);
        assert_eq!(cached.len(), s.prefix.len());
    }
    assert!(mirror.removed > 0, "the cache was meant to evict");
    assert!(mirror.stored > mirror.removed);
    // A prompt's first block is named as vLLM names it.
    let first = hasher.hash(None, &reqs[11].0[..8]);
    assert!(mirror.blocks.contains(&first));
}

#[test]
fn a_full_cache_preempts_and_recomputes_without_changing_answers() {
    // 12 blocks of 8 = 96 slots for 4 sequences that grow to 60 tokens each.
    let reqs: Vec<(Vec<u32>, usize)> = (0..4).map(|i| (prompt(20, 10 + i as u32), 40)).collect();
    let (out, _, s) = serve(cfg(12), &reqs);
    for (i, (p, n)) in reqs.iter().enumerate() {
        assert_eq!(out[i], alone(p, *n), "request {i}");
    }
    assert!(s.preemptions() > 0, "the cache was meant to run out");
    assert_eq!(s.blocks_used(), s.blocks_cached_idle());
}

#[test]
fn cancelling_frees_blocks_at_once() {
    let c = cfg(64);
    let mut s = Scheduler::new(c.clone());
    let mut m = FakeModel::new(c.block_size);
    s.submit(1, prompt(30, 1), 50).unwrap();
    s.submit(2, prompt(30, 2), 50).unwrap();
    for _ in 0..3 {
        let st = s.schedule();
        let sm = m.run(&st);
        s.complete(&st, &sm);
    }
    assert!(s.blocks_used() > 0);
    assert!(s.finish(1) && s.finish(2));
    assert!(!s.finish(2));
    assert_eq!((s.running(), s.waiting()), (0, 0));
    assert_eq!(s.blocks_used(), s.blocks_cached_idle());
}

#[test]
fn refuses_what_it_cannot_hold() {
    let mut c = cfg(4);
    c.max_queue = 1;
    let mut s = Scheduler::new(c);
    assert_eq!(s.submit(0, vec![], 1), Err(SubmitError::Empty));
    assert!(matches!(
        s.submit(0, prompt(300, 1), 1),
        Err(SubmitError::TooLong { .. })
    ));
    assert!(matches!(
        s.submit(0, prompt(40, 1), 1),
        Err(SubmitError::TooBig { .. })
    ));
    s.submit(0, prompt(4, 1), 1).unwrap();
    assert_eq!(s.submit(0, prompt(4, 1), 1), Err(SubmitError::Duplicate(0)));
    assert_eq!(s.submit(1, prompt(4, 1), 1), Err(SubmitError::QueueFull(1)));
}

/// Speculative decoding inside continuous batching: before each step every decoding sequence
/// proposes drafts — some right (the answer it will give), some wrong — and the scheduler feeds
/// them within the step's budget. Answers equal those computed alone, also when the cache runs
/// short and sequences are preempted; refused drafts give their blocks back; none leak.
#[test]
fn drafts_are_verified_and_rolled_back_within_batches() {
    for (blocks, budget) in [(64, 24), (14, 24), (64, 6)] {
        let reqs: Vec<(Vec<u32>, usize)> = (0..4)
            .map(|i| (prompt(9 + 5 * i, 40 + i as u32), 30))
            .collect();
        let mut c = cfg(blocks);
        c.max_step_tokens = budget;
        let mut s = Scheduler::new(c.clone());
        let mut m = FakeModel::new(c.block_size);
        let mut out: Vec<Vec<u32>> = vec![Vec::new(); reqs.len()];
        for (i, (p, n)) in reqs.iter().enumerate() {
            s.submit(i as u64, p.clone(), *n).unwrap();
        }
        let (mut done, mut steps, mut drafted, mut longest) = (0, 0, 0, 0);
        while done < reqs.len() {
            for (i, (p, n)) in reqs.iter().enumerate() {
                let id = i as u64;
                if !s.decoding(id) {
                    continue;
                }
                // The right continuation after what it has, wrong from a point on (every
                // third step, from the start).
                let want = alone(p, *n + 8);
                let have = out[i].len();
                let mut d: Vec<u32> = want[have.min(want.len())..]
                    .iter()
                    .take(5)
                    .copied()
                    .collect();
                let wrong_from = (steps + i) % 3 * 2;
                for (j, t) in d.iter_mut().enumerate() {
                    if j >= wrong_from {
                        *t = *t % 1000 + 1;
                    }
                }
                drafted += d.len();
                s.set_draft(id, d);
            }
            let step = s.schedule();
            assert!(!step.is_empty(), "no progress with work pending");
            assert!(step.n_tokens() <= c.max_step_tokens && step.items.len() <= c.max_batch);
            let sampled = m.run(&step);
            for (id, new) in &sampled {
                longest = longest.max(new.len());
                out[*id as usize].extend(new);
            }
            s.complete(&step, &sampled);
            for (id, (_, n)) in reqs.iter().enumerate() {
                let o = &mut out[id];
                if o.len() >= *n && s.finish(id as u64) {
                    o.truncate(*n);
                    done += 1;
                }
            }
            steps += 1;
            assert!(steps < 10_000);
        }
        for (i, (p, n)) in reqs.iter().enumerate() {
            assert_eq!(
                out[i],
                alone(p, *n),
                "request {i}, {blocks} blocks, budget {budget}"
            );
        }
        assert!(drafted > 0 && longest > 2, "drafts were taken ({longest})");
        assert_eq!(s.blocks_used(), s.blocks_cached_idle(), "KV blocks leaked");
        if blocks == 14 {
            assert!(s.preemptions() > 0, "the cache was meant to run out");
        }
    }
}
