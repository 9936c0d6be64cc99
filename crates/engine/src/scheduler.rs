//! Continuous batching over the paged KV cache, on plain data: which sequences run in a step,
//! which of their tokens are fed, which KV blocks they live in. It never sees a tensor; the
//! engine loop turns a `Step` into a `BatchPlan` (`Step::plan`), runs the model, samples, and
//! reports the new tokens back (`Scheduler::complete`). Tests drive it with a fake executor.
//!
//! Policy, per step: every running sequence that has its whole context in the cache decodes one
//! token; the remaining token budget goes to prompts in chunks (a long prompt is spread over
//! steps, so it never stalls the others' decoding); waiting sequences are admitted in arrival
//! order while the batch has room and the cache has blocks. When a growing sequence finds no
//! free block, the most recently admitted sequence is preempted: its blocks are freed and it goes
//! back to the front of the queue to be recomputed later (nothing it produced is lost).
//!
//! Sliding windows: when every layer of the model attends only to its last `window` positions
//! (`set_window`), a sequence's blocks that fall wholly before the window of its next token are
//! given back at once (their table entries become `FREED`), so a long conversation holds about
//! a window's worth of cache, not its whole length.
//!
//! Prefix caching: every full block of a prompt is registered under a hash of all tokens up to
//! its end, so a later prompt with the same start reuses those blocks (reference counted) and
//! skips computing them. Cached blocks nobody uses are evicted, oldest first, when the allocator
//! runs short.

use crate::kv::{BlockAllocator, FREED};
use crate::kv_events::{BlockHash, BlockHasher, EventLog, KvEvent};
use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use suanli_backend::{AttnSeq, BatchPlan};

pub type SeqId = u64;

#[derive(Clone, Debug)]
pub struct SchedConfig {
    /// Sequences in one step.
    pub max_batch: usize,
    /// Tokens fed in one step (decode tokens plus prompt chunks).
    pub max_step_tokens: usize,
    /// Requests allowed to wait (beyond that, `submit` refuses).
    pub max_queue: usize,
    pub block_size: usize,
    pub num_blocks: usize,
    /// Longest context (prompt + generated) of one sequence.
    pub max_ctx: usize,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubmitError {
    #[error("the queue is full ({0} requests waiting)")]
    QueueFull(usize),
    #[error(
        "the request needs {needed} tokens of context, more than the {max} this server allows"
    )]
    TooLong { needed: usize, max: usize },
    #[error("the request needs {needed} KV blocks, more than the cache's {total}")]
    TooBig { needed: usize, total: usize },
    #[error("the prompt is empty")]
    Empty,
    #[error("sequence {0} already exists")]
    Duplicate(SeqId),
}

/// One sequence's share of a step: `tokens` are fed at positions `start..start + len`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepItem {
    pub seq: SeqId,
    pub tokens: Vec<u32>,
    pub start: usize,
    pub block_table: Vec<u32>,
    /// The step ends this sequence's prompt (or is a decode step): sample from its last row.
    pub sample: bool,
    /// Logits for every row, not just the sampling one (prompt log-probabilities).
    pub logits_all: bool,
    /// The position of the first generated token (the prompt's length): see
    /// `AttnSeq::generated_from`.
    pub generated_from: usize,
    /// Drafted tokens at the end of `tokens` (speculative decoding): the last `draft + 1` rows
    /// are sampled, and what the engine does not accept is rolled back in `complete`.
    pub draft: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Step {
    pub items: Vec<StepItem>,
}

impl Step {
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn n_tokens(&self) -> usize {
        self.items.iter().map(|i| i.tokens.len()).sum()
    }

    /// The model's batch plan: rows grouped by sequence, logits for each sampling row.
    pub fn plan(&self, block_size: usize) -> BatchPlan {
        let mut p = BatchPlan::default();
        for it in &self.items {
            let q_start = p.tokens.len();
            for (i, &t) in it.tokens.iter().enumerate() {
                let pos = it.start + i;
                p.tokens.push(t);
                p.positions.push(pos as u32);
                p.slots.push(
                    it.block_table[pos / block_size] * block_size as u32
                        + (pos % block_size) as u32,
                );
            }
            p.seqs.push(AttnSeq {
                q_start,
                q_len: it.tokens.len(),
                ctx_len: it.start + it.tokens.len(),
                block_table: it.block_table.clone(),
                generated_from: it.generated_from,
            });
            if it.logits_all {
                p.logits_rows
                    .extend((q_start..p.tokens.len()).map(|r| r as u32));
            } else if it.sample {
                let end = p.tokens.len();
                p.logits_rows
                    .extend((end - 1 - it.draft..end).map(|r| r as u32));
            }
        }
        p
    }
}

struct Seq {
    id: SeqId,
    /// Prompt, then generated tokens.
    tokens: Vec<u32>,
    prompt_len: usize,
    /// Tokens whose K/V are in the cache.
    cached: usize,
    blocks: Vec<u32>,
    /// Prompt blocks already registered in the prefix cache.
    registered: usize,
    /// The vLLM hash of prompt block `registered - 1` (KV events only).
    hash_tail: Option<BlockHash>,
    /// Prompt tokens found in the prefix cache at admission (reported as cached tokens).
    prefix_hit: usize,
    /// Every prompt position's logits are wanted: never served from the prefix cache, and fed
    /// in chunks of at most `PROMPT_LOGITS_CHUNK` tokens (each row costs a vocabulary of logits).
    prompt_logits: bool,
    /// Tokens proposed to follow the last one (speculative decoding), verified in its next
    /// decode step (`set_draft`).
    draft: Vec<u32>,
}

/// Prompt chunk size for sequences that want every prompt position's logits.
pub const PROMPT_LOGITS_CHUNK: usize = 32;

impl Seq {
    fn ctx(&self) -> usize {
        self.tokens.len()
    }
}

/// What `complete` tells the caller about each sequence in the step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    pub seq: SeqId,
    /// Prompt tokens served from the prefix cache (known once the prompt is done).
    pub cached_prompt_tokens: usize,
}

pub struct Scheduler {
    cfg: SchedConfig,
    alloc: BlockAllocator,
    waiting: VecDeque<Seq>,
    running: Vec<Seq>,
    /// Hash of the tokens up to a block's end → the block (the cache holds one reference).
    prefix: HashMap<u64, u32>,
    /// Registered blocks, oldest first (for eviction).
    prefix_order: VecDeque<(u64, u32)>,
    prefix_hits: u64,
    preemptions: u64,
    /// The prefix-cache hash key.
    keyed: RandomState,
    /// Every layer attends to at most this many positions (the query's own included).
    window: Option<usize>,
    /// Blocks given back because they fell out of the window, so far.
    window_freed: u64,
    /// What the prefix cache stored and evicted, for the server to publish (off by default).
    events: Option<EventLog>,
}

/// The prefix-cache key of each full block of `tokens`: a hash of the previous block's key and
/// this block's tokens, so it covers the whole prefix. SipHash with a key drawn per process:
/// a client cannot craft a prompt whose blocks collide with another client's and so read
/// someone else's cached context.
fn block_keys<'a>(
    keyed: &'a RandomState,
    tokens: &'a [u32],
    block_size: usize,
) -> impl Iterator<Item = u64> + 'a {
    tokens.chunks_exact(block_size).scan(0u64, move |h, block| {
        let mut s = keyed.build_hasher();
        s.write_u64(*h);
        for &t in block {
            s.write_u32(t);
        }
        *h = s.finish();
        Some(*h)
    })
}

impl Scheduler {
    pub fn new(cfg: SchedConfig) -> Scheduler {
        Scheduler {
            alloc: BlockAllocator::new(cfg.num_blocks),
            cfg,
            waiting: VecDeque::new(),
            running: Vec::new(),
            prefix: HashMap::new(),
            prefix_order: VecDeque::new(),
            prefix_hits: 0,
            preemptions: 0,
            keyed: RandomState::new(),
            window: None,
            window_freed: 0,
            events: None,
        }
    }

    /// Record the prefix cache's changes as KV events (`take_kv_events`), its blocks named by
    /// `hasher`.
    pub fn enable_kv_events(&mut self, hasher: BlockHasher) {
        self.events = Some(EventLog::new(hasher));
    }

    /// The KV events since the last call, oldest first (none unless enabled).
    pub fn take_kv_events(&mut self) -> Vec<KvEvent> {
        self.events.as_mut().map(EventLog::take).unwrap_or_default()
    }

    /// Every layer of the model attends to at most the last `window` positions: blocks before
    /// a sequence's window are freed as it advances. `None` (any layer sees everything): never.
    pub fn set_window(&mut self, window: Option<usize>) {
        self.window = window.filter(|&w| w > 0);
    }

    /// The window every layer attends within, if any (`set_window`).
    pub fn window(&self) -> Option<usize> {
        self.window
    }

    /// Blocks given back because they fell out of every layer's window, so far.
    pub fn window_freed(&self) -> u64 {
        self.window_freed
    }

    pub fn config(&self) -> &SchedConfig {
        &self.cfg
    }

    pub fn running(&self) -> usize {
        self.running.len()
    }

    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Blocks held by sequences or the prefix cache.
    pub fn blocks_used(&self) -> usize {
        self.alloc.total() - self.alloc.free_count()
    }

    /// Blocks held only by the prefix cache (free for the taking).
    pub fn blocks_cached_idle(&self) -> usize {
        self.prefix_order
            .iter()
            .filter(|(_, b)| self.alloc.refs(*b) == 1)
            .count()
    }

    pub fn prefix_hits(&self) -> u64 {
        self.prefix_hits
    }

    /// Sequences sent back to the queue for lack of blocks, so far.
    pub fn preemptions(&self) -> u64 {
        self.preemptions
    }

    /// Queue a request. `max_new` bounds what it may generate (for the context check).
    pub fn submit(
        &mut self,
        id: SeqId,
        prompt: Vec<u32>,
        max_new: usize,
    ) -> Result<(), SubmitError> {
        self.submit_with(id, prompt, max_new, false)
    }

    /// `submit`, optionally asking for the logits of every prompt position.
    pub fn submit_with(
        &mut self,
        id: SeqId,
        prompt: Vec<u32>,
        max_new: usize,
        prompt_logits: bool,
    ) -> Result<(), SubmitError> {
        if prompt.is_empty() {
            return Err(SubmitError::Empty);
        }
        if self.waiting.iter().chain(&self.running).any(|s| s.id == id) {
            return Err(SubmitError::Duplicate(id));
        }
        let needed = prompt.len().saturating_add(max_new);
        if needed > self.cfg.max_ctx {
            return Err(SubmitError::TooLong {
                needed,
                max: self.cfg.max_ctx,
            });
        }
        let mut blocks = needed.div_ceil(self.cfg.block_size);
        if let Some(w) = self.window {
            // At most a window and a step's chunk are held at once (plus a partial block at
            // either end).
            let held = (w + self.cfg.max_step_tokens).div_ceil(self.cfg.block_size) + 2;
            blocks = blocks.min(held);
        }
        if blocks > self.cfg.num_blocks {
            return Err(SubmitError::TooBig {
                needed: blocks,
                total: self.cfg.num_blocks,
            });
        }
        if self.waiting.len() >= self.cfg.max_queue {
            return Err(SubmitError::QueueFull(self.waiting.len()));
        }
        self.waiting.push_back(Seq {
            id,
            prompt_len: prompt.len(),
            tokens: prompt,
            cached: 0,
            blocks: Vec::new(),
            registered: 0,
            hash_tail: None,
            prefix_hit: 0,
            prompt_logits,
            draft: Vec::new(),
        });
        Ok(())
    }

    /// Propose `draft` to follow sequence `id`'s last token: its next decode step feeds them
    /// too (as far as the step's budget and the context allow) and samples every row.
    /// Ignored unless the sequence is running and decoding.
    pub fn set_draft(&mut self, id: SeqId, mut draft: Vec<u32>) {
        let max_ctx = self.cfg.max_ctx;
        if let Some(s) = self.running.iter_mut().find(|s| s.id == id) {
            if s.cached + 1 == s.ctx() {
                draft.truncate(max_ctx.saturating_sub(s.ctx()));
                s.draft = draft;
            }
        }
    }

    /// Whether sequence `id` is running with its whole context but its last token cached (its
    /// next step decodes).
    pub fn decoding(&self, id: SeqId) -> bool {
        self.seq(id).is_some_and(|s| s.cached + 1 == s.ctx())
    }

    /// Drop a sequence (finished, cancelled or disconnected): its blocks are freed at once.
    /// Returns whether it existed.
    pub fn finish(&mut self, id: SeqId) -> bool {
        if let Some(i) = self.running.iter().position(|s| s.id == id) {
            let s = self.running.remove(i);
            self.alloc.release(&s.blocks);
            return true;
        }
        if let Some(i) = self.waiting.iter().position(|s| s.id == id) {
            let s = self.waiting.remove(i).expect("index from position");
            self.alloc.release(&s.blocks);
            return true;
        }
        false
    }

    /// `n` blocks, evicting idle prefix-cache blocks (oldest first) when the free list is short.
    fn take_blocks(&mut self, n: usize) -> Option<Vec<u32>> {
        while self.alloc.free_count() < n {
            let idle = self
                .prefix_order
                .iter()
                .position(|(_, b)| self.alloc.refs(*b) == 1)?;
            let (h, b) = self.prefix_order.remove(idle).expect("index from position");
            self.prefix.remove(&h);
            self.alloc.release(&[b]);
            if let Some(log) = &mut self.events {
                if let Some(ext) = log.hashes.remove(&h) {
                    log.removed(ext);
                }
            }
        }
        self.alloc.alloc(n).ok()
    }

    /// Reuse cached blocks for the start of a new sequence's prompt. At least one prompt token
    /// is always left to compute (its logits are needed).
    fn attach_prefix(&mut self, s: &mut Seq) {
        let bs = self.cfg.block_size;
        let full = (s.prompt_len - 1) / bs;
        for h in block_keys(&self.keyed, &s.tokens[..full * bs], bs) {
            match self.prefix.get(&h) {
                Some(&blk) => {
                    self.alloc.retain(blk);
                    s.blocks.push(blk);
                    s.hash_tail = self.events.as_ref().and_then(|l| l.hashes.get(&h).copied());
                }
                None => break,
            }
        }
        s.cached = s.blocks.len() * bs;
        s.registered = s.blocks.len();
        s.prefix_hit = s.cached;
        if s.prefix_hit > 0 {
            self.prefix_hits += 1;
        }
    }

    /// Register the sequence's newly completed prompt blocks in the prefix cache.
    fn register_prefix(&mut self, idx: usize) {
        let bs = self.cfg.block_size;
        let s = &self.running[idx];
        let full = s.cached.min(s.prompt_len) / bs;
        if full <= s.registered {
            return;
        }
        let mut tail = s.hash_tail;
        for (b, h) in block_keys(&self.keyed, &s.tokens[..full * bs], bs)
            .enumerate()
            .skip(s.registered)
        {
            let tokens = &s.tokens[b * bs..(b + 1) * bs];
            let parent = tail;
            tail = self
                .events
                .as_ref()
                .map(|l| l.hasher.hash(parent.as_ref(), tokens));
            let blk = s.blocks[b];
            if self.prefix.contains_key(&h) || blk == FREED {
                continue;
            }
            self.prefix.insert(h, blk);
            self.prefix_order.push_back((h, blk));
            self.alloc.retain(blk);
            if let (Some(log), Some(ext)) = (&mut self.events, tail) {
                log.hashes.insert(h, ext);
                log.stored(parent, ext, tokens);
            }
        }
        self.running[idx].registered = full;
        self.running[idx].hash_tail = tail;
    }

    /// Give back sequence `idx`'s blocks wholly before the window of its next token (at
    /// position `cached`, which attends to `cached + 1 - window ..= cached`; later tokens see
    /// less of the past still).
    fn free_outside_window(&mut self, idx: usize) {
        let Some(w) = self.window else { return };
        let bs = self.cfg.block_size;
        let s = &mut self.running[idx];
        let dead = (s.cached + 1).saturating_sub(w) / bs;
        for b in s.blocks.iter_mut().take(dead) {
            if *b != FREED {
                self.alloc.release(&[*b]);
                *b = FREED;
                self.window_freed += 1;
            }
        }
    }

    /// Preempt the most recently admitted running sequence other than `keep`: free its blocks
    /// and put it back at the head of the queue. Returns false when there is none.
    fn preempt(&mut self, keep: SeqId) -> bool {
        let Some(i) = self.running.iter().rposition(|s| s.id != keep) else {
            return false;
        };
        self.requeue(i);
        true
    }

    /// Make sure sequence `idx` has blocks for `len` tokens, preempting others if needed.
    /// False when even preemption cannot make room (the sequence itself is then preempted).
    fn grow(&mut self, id: SeqId, len: usize) -> bool {
        let bs = self.cfg.block_size;
        loop {
            let Some(idx) = self.running.iter().position(|s| s.id == id) else {
                return false;
            };
            let need = len
                .div_ceil(bs)
                .saturating_sub(self.running[idx].blocks.len());
            if need == 0 {
                return true;
            }
            if let Some(b) = self.take_blocks(need) {
                self.running[idx].blocks.extend(b);
                return true;
            }
            if !self.preempt(id) {
                // Alone and still no room: wait for blocks to come back.
                self.requeue(idx);
                return false;
            }
        }
    }

    /// Send running sequence `idx` back to the head of the queue, its blocks freed (it will be
    /// recomputed, prompt and generated tokens alike).
    fn requeue(&mut self, idx: usize) {
        let mut s = self.running.remove(idx);
        self.alloc.release(&s.blocks);
        s.blocks.clear();
        s.cached = 0;
        s.registered = 0;
        s.hash_tail = None;
        s.draft.clear();
        self.waiting.push_front(s);
        self.preemptions += 1;
    }

    /// Decide the next step.
    pub fn schedule(&mut self) -> Step {
        let mut budget = self.cfg.max_step_tokens.max(1);
        let mut step = Step::default();
        // Admit waiting sequences, in order, while the batch has room and the cache has blocks
        // for the whole context (so that an admitted sequence is not preempted right away; the
        // first one always gets in).
        while self.running.len() < self.cfg.max_batch {
            let Some(front) = self.waiting.front() else {
                break;
            };
            let need = front.ctx().div_ceil(self.cfg.block_size) + 1;
            if !self.running.is_empty()
                && self.alloc.free_count() + self.blocks_cached_idle() < need
            {
                break;
            }
            let mut s = self.waiting.pop_front().expect("front exists");
            if s.blocks.is_empty() && s.cached == 0 && !s.prompt_logits {
                self.attach_prefix(&mut s);
            }
            self.running.push(s);
        }
        // Decodes first (one token each), then prompt chunks in admission order.
        let ids: Vec<SeqId> = self.running.iter().map(|s| s.id).collect();
        let mut order: Vec<SeqId> = ids
            .iter()
            .copied()
            .filter(|id| self.seq(*id).is_some_and(|s| s.cached + 1 == s.ctx()))
            .collect();
        order.extend(
            ids.iter()
                .copied()
                .filter(|id| self.seq(*id).is_some_and(|s| s.cached + 1 < s.ctx())),
        );
        for id in order {
            if budget == 0 {
                break;
            }
            let Some(s) = self.seq(id) else { continue };
            let scoring = s.prompt_logits && s.cached + 1 < s.prompt_len;
            let take = if scoring {
                budget.min(PROMPT_LOGITS_CHUNK)
            } else {
                budget
            };
            let (start, end) = (s.cached, (s.cached + take).min(s.ctx()));
            // A decode step takes the drafts that fit in the budget too.
            let draft = match end == s.ctx() {
                true => s.draft.len().min(budget - (end - start)),
                false => 0,
            };
            if !self.grow(id, end + draft) {
                continue;
            }
            let Some(s) = self.running.iter_mut().find(|s| s.id == id) else {
                continue;
            };
            budget -= end + draft - start;
            let mut tokens = s.tokens[start..end].to_vec();
            tokens.extend_from_slice(&s.draft[..draft]);
            s.draft.clear();
            step.items.push(StepItem {
                seq: id,
                tokens,
                start,
                block_table: s.blocks.clone(),
                sample: end == s.ctx(),
                logits_all: scoring,
                generated_from: s.prompt_len,
                draft,
            });
        }
        // A sequence preempted after it was planned must not run.
        step.items.retain(|it| self.seq(it.seq).is_some());
        step
    }

    fn seq(&self, id: SeqId) -> Option<&Seq> {
        self.running.iter().find(|s| s.id == id)
    }

    /// The step ran: its tokens are in the cache; `sampled` gives each sampling sequence's new
    /// tokens: the drafts it accepted, then the one sampled after them (the caller then decides
    /// whether it finished and calls `finish`). Refused drafts are rolled back: out of the
    /// cache's count, their blocks beyond the sequence's context freed.
    pub fn complete(&mut self, step: &Step, sampled: &[(SeqId, Vec<u32>)]) -> Vec<Progress> {
        let bs = self.cfg.block_size;
        let mut out = Vec::new();
        for it in &step.items {
            let Some(idx) = self.running.iter().position(|s| s.id == it.seq) else {
                continue;
            };
            let new = match it.sample {
                true => sampled.iter().find(|(id, _)| *id == it.seq).map(|x| &x.1),
                false => None,
            };
            // Drafts accepted: all the new tokens but the last (which is not in the cache yet).
            let accepted = new.map_or(0, |n| n.len().saturating_sub(1)).min(it.draft);
            let s = &mut self.running[idx];
            s.cached = it.start + it.tokens.len() - (it.draft - accepted);
            if let Some(new) = new {
                s.tokens.extend_from_slice(new);
            }
            if it.draft > accepted {
                let keep = s.ctx().div_ceil(bs);
                if s.blocks.len() > keep {
                    let extra = s.blocks.split_off(keep);
                    self.alloc.release(&extra);
                }
            }
            self.register_prefix(idx);
            self.free_outside_window(idx);
            out.push(Progress {
                seq: it.seq,
                cached_prompt_tokens: self.running[idx].prefix_hit,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests;
