//! One sequence at a time over the paged KV cache: prefill in chunks, then decode token by
//! token. The tokens already in the cache are remembered, so a follow-up prompt that extends
//! them (a chat turn) only computes its new suffix.

use crate::constraint::{constrained_pick, TokenConstraint};
use crate::kv::OutOfBlocks;
use crate::sampler::{argmax, Sampler, SamplingParams};
use crate::seq_cache::SeqCache;
use crate::spec::{SeqSpec, SpecConfig, SpecMode, SpecStats};
use std::time::{Duration, Instant};
use suanli_backend::{Backend, BackendError, KvDType};
use suanli_models::{HeadRows, Model};

pub const BLOCK_SIZE: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    OutOfBlocks(#[from] OutOfBlocks),
    #[error(
        "the prompt has {prompt} tokens but the context holds {ctx}; shorten it or raise --ctx"
    )]
    PromptTooLong { prompt: usize, ctx: usize },
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    BadToken { id: u32, vocab: usize },
    #[error("{failed}: {0}", failed = crate::constraint::FAILED)]
    Constraint(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

#[derive(Debug)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    /// Prompt tokens served from the cache.
    pub cached_tokens: usize,
    pub prefill_secs: f64,
    pub decode_secs: f64,
    /// Speculative decoding's drafts and acceptances (zero without it).
    pub spec: SpecStats,
}

impl Generation {
    /// Decode speed, tokens after the first per second of decoding.
    pub fn tokens_per_second(&self) -> f64 {
        let n = self.tokens.len().saturating_sub(1);
        if n == 0 || self.decode_secs <= 0.0 {
            0.0
        } else {
            n as f64 / self.decode_secs
        }
    }
}

/// The first token id a vocabulary of `vocab` does not have.
pub(crate) fn out_of_vocab(tokens: &[u32], vocab: usize) -> Option<u32> {
    tokens.iter().copied().find(|&t| t as usize >= vocab)
}

/// What the token callback wants next.
pub enum Control {
    Continue,
    Stop,
}

pub struct Session<B: Backend> {
    pub backend: B,
    pub model: Model<B>,
    seq: SeqCache<B>,
    spec: Option<Speculation>,
    /// Speculation switched off, kept so that switching it back on with the same settings
    /// keeps what it learned.
    parked: Option<Speculation>,
    /// A small model with the same vocabulary proposing drafts (`SpecMode::Draft`).
    draft: Option<DraftModel<B>>,
}

/// Speculative decoding's settings and what it has learned (kept across turns).
struct Speculation {
    cfg: SpecConfig,
    state: SeqSpec,
    /// Draft model: steps until a proposal is made anyway while speculation does not pay, so
    /// that its acceptance is still measured (its drafts are not free, unlike n-grams).
    probe_in: usize,
}

/// Steps between such probes while half the drafts are taken, and at most.
pub(crate) const PROBE_EVERY: usize = 8;
const PROBE_MOST: usize = 128;

/// Whether a draft model proposes anyway though drafting does not pay now (`k` 0, room for
/// one), its drafts taken at rate `a`: after `probe_interval(a)` such steps, so that its
/// acceptance is still measured.
fn probe_due(k: usize, room: usize, probe_in: &mut usize, a: f64) -> bool {
    if k > 0 || room == 0 {
        return false;
    }
    *probe_in = probe_in.saturating_sub(1);
    let due = *probe_in == 0;
    if due {
        *probe_in = probe_interval(a);
    }
    due
}

/// Steps to the next probe at acceptance rate `a`: `PROBE_EVERY` at one half, longer as fewer
/// drafts are taken (up to `PROBE_MOST`). A probe first feeds the draft model every token
/// since the last one, which costs a prompt's work per token (on Chinese answers the 0.5B's
/// drafts do not pay for the 1.5B: probing every 8 steps made them 7–10 % slower than
/// decoding without speculation); fewer, longer feeds cost less.
fn probe_interval(a: f64) -> usize {
    let steps = PROBE_EVERY as f64 * 0.5 / a.max(1e-3);
    (steps.round() as usize).clamp(PROBE_EVERY, PROBE_MOST)
}

/// A draft model and its own cache of the sequence (a batch's: of the one sequence drafting).
pub(crate) struct DraftModel<B: Backend> {
    model: Model<B>,
    seq: SeqCache<B>,
    /// The drafted-for model's vocabulary: a proposal at or past it ends the draft.
    target_vocab: usize,
    /// Per token, whether the model's short head has it (empty without one).
    in_short: Vec<bool>,
    stats: DraftStats,
}

/// What a draft model did since it was set, summed: for `bench --spec draft`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DraftStats {
    /// Proposals made, and those its short head served (`short_head_serves`).
    pub proposals: u64,
    pub short_head: u64,
    /// Drafted tokens timed as a drafting step (not a first feed catching up on the text) and
    /// their seconds.
    pub timed_tokens: u64,
    pub timed_secs: f64,
}

impl DraftStats {
    /// What was done between `before` and `self`.
    pub fn since(&self, before: &DraftStats) -> DraftStats {
        DraftStats {
            proposals: self.proposals - before.proposals,
            short_head: self.short_head - before.short_head,
            timed_tokens: self.timed_tokens - before.timed_tokens,
            timed_secs: self.timed_secs - before.timed_secs,
        }
    }

    /// Mean seconds of a drafted token, if any was timed.
    pub fn secs_per_token(&self) -> Option<f64> {
        (self.timed_tokens > 0).then(|| self.timed_secs / self.timed_tokens as f64)
    }

    /// The share of proposals the short head served, if any was made.
    pub fn short_head_share(&self) -> Option<f64> {
        (self.proposals > 0).then(|| self.short_head as f64 / self.proposals as f64)
    }
}

impl<B: Backend> Session<B> {
    /// Give back the backend and model (the KV cache is freed).
    pub fn into_parts(self) -> (B, Model<B>) {
        (self.backend, self.model)
    }

    /// `ctx`: the most tokens a sequence may hold; `chunk`: tokens per prefill step. The KV
    /// cache is F16, as llama.cpp's default.
    pub fn new(
        backend: B,
        model: Model<B>,
        ctx: usize,
        chunk: usize,
    ) -> Result<Session<B>, SessionError> {
        Self::with_kv(backend, model, ctx, chunk, KvDType::F16)
    }

    pub fn with_kv(
        backend: B,
        model: Model<B>,
        ctx: usize,
        chunk: usize,
        kv_dtype: KvDType,
    ) -> Result<Session<B>, SessionError> {
        let seq = SeqCache::new(&backend, &model, ctx, chunk, kv_dtype)?;
        Ok(Session {
            backend,
            model,
            seq,
            spec: None,
            parked: None,
            draft: None,
        })
    }

    pub fn ctx(&self) -> usize {
        self.seq.ctx
    }

    /// Decode speculatively (`None`: one token per forward pass). The output is the same token
    /// for token either way (`spec`). `SpecMode::Draft` needs `set_draft_model` first.
    pub fn set_speculation(&mut self, cfg: Option<SpecConfig>) -> Result<(), String> {
        if let Some(s) = self.spec.take() {
            self.parked = Some(s);
        }
        self.spec = match cfg {
            None => None,
            Some(cfg) if self.parked.as_ref().is_some_and(|p| p.cfg == cfg) => self.parked.take(),
            Some(cfg) => {
                cfg.validate()?;
                if cfg.mode == SpecMode::Draft && self.draft.is_none() {
                    return Err("speculation with a draft model needs the draft model".into());
                }
                Some(Speculation {
                    state: SeqSpec::new(&cfg),
                    cfg,
                    probe_in: PROBE_EVERY,
                })
            }
        };
        Ok(())
    }

    /// The model drafting for `SpecMode::Draft`: the same tokenizer (its vocabulary may differ
    /// by padding rows, which the caller checks: `Tokenizer::drafting_mismatch`), its own KV
    /// cache of this session's context, run by this session's backend.
    pub fn set_draft_model(&mut self, model: Model<B>, kv: KvDType) -> Result<(), SessionError> {
        self.draft = Some(DraftModel::new(
            &self.backend,
            model,
            &self.model,
            self.seq.ctx,
            kv,
        )?);
        Ok(())
    }

    /// What the draft model did since it was set (`None` without one).
    pub fn draft_stats(&self) -> Option<DraftStats> {
        self.draft.as_ref().map(|d| d.stats)
    }

    /// Forget the cached sequence and free its blocks.
    pub fn reset(&mut self) {
        self.seq.reset();
        if let Some(d) = &mut self.draft {
            d.seq.reset();
        }
    }

    /// Append `tokens` (prompt) to the cached sequence. Returns logits `[rows, vocab]` for the
    /// rows whose index (within `tokens`) is `>= logits_from`.
    pub fn feed(&mut self, tokens: &[u32], logits_from: usize) -> Result<&[f32], SessionError> {
        self.feed_as(tokens, logits_from, false)
    }

    /// `feed` for tokens the model generated (decode rather than prefill kernels where a
    /// backend tells them apart: `AttnSeq::generated_from`).
    pub fn feed_generated(
        &mut self,
        tokens: &[u32],
        logits_from: usize,
    ) -> Result<&[f32], SessionError> {
        self.feed_as(tokens, logits_from, true)
    }

    fn feed_as(
        &mut self,
        tokens: &[u32],
        logits_from: usize,
        generated: bool,
    ) -> Result<&[f32], SessionError> {
        self.seq
            .feed(&self.backend, &self.model, tokens, logits_from, generated)
    }

    /// Generate after `prompt`. `on_token` sees each new token and may stop generation.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        params: &SamplingParams,
        max_tokens: usize,
        is_eog: &dyn Fn(u32) -> bool,
        on_token: &mut dyn FnMut(u32) -> Control,
    ) -> Result<Generation, SessionError> {
        self.generate_constrained(prompt, params, max_tokens, is_eog, on_token, None)
    }

    /// `generate` with each token drawn among those `constraint` allows (a JSON schema, a
    /// grammar); it allows an end-of-generation token once its text is complete.
    pub fn generate_constrained(
        &mut self,
        prompt: &[u32],
        params: &SamplingParams,
        max_tokens: usize,
        is_eog: &dyn Fn(u32) -> bool,
        on_token: &mut dyn FnMut(u32) -> Control,
        mut constraint: Option<&mut dyn TokenConstraint>,
    ) -> Result<Generation, SessionError> {
        if prompt.is_empty() {
            return Err(SessionError::EmptyPrompt);
        }
        if prompt.len() >= self.seq.ctx {
            return Err(SessionError::PromptTooLong {
                prompt: prompt.len(),
                ctx: self.seq.ctx,
            });
        }
        let vocab = self.model.vocab_size();
        if let Some(id) = out_of_vocab(prompt, vocab) {
            return Err(SessionError::BadToken { id, vocab });
        }
        // Reuse the cached prefix; at least the last prompt token is recomputed for its logits.
        let common = self.seq.keep_prefix_of(prompt);
        let t0 = Instant::now();
        let mut sampler = Sampler::new(params.clone());
        let mut history: Vec<u32> = prompt.to_vec();
        let suffix = prompt[common..].to_vec();
        let mut logits = self.feed(&suffix, suffix.len() - 1)?.to_vec();
        // A draft model reads the prompt with the model (prompt processing, as llama.cpp's
        // draft does), so that its first proposal costs a token's work, not a prompt's.
        if let (Some(s), Some(d)) = (&self.spec, &mut self.draft) {
            if s.cfg.mode == SpecMode::Draft {
                d.follow(&self.backend, prompt)?;
            }
        }
        let prefill_secs = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let mut out = Vec::new();
        let mut stats = SpecStats::default();
        // One draw per emitted token, in order, as without speculation.
        let mut pick = |constraint: &mut Option<&mut dyn TokenConstraint>,
                        logits: &mut [f32],
                        history: &[u32]|
         -> Result<u32, SessionError> {
            Ok(match constraint.as_deref_mut() {
                None => sampler.sample(logits, history),
                Some(c) => {
                    sampler.prepare(logits, history);
                    constrained_pick(c, logits, |l| sampler.pick(l))
                        .map_err(SessionError::Constraint)?
                        .0
                }
            })
        };
        // Take `tok` as the next token, the cache holding `cached` tokens (those before it):
        // Some(reason) when generation ends there.
        let ctx = self.seq.ctx;
        let mut emit = |tok: u32, cached: usize, out: &mut Vec<u32>, history: &mut Vec<u32>| {
            if is_eog(tok) {
                return Some(FinishReason::Stop);
            }
            out.push(tok);
            history.push(tok);
            if let Control::Stop = on_token(tok) {
                return Some(FinishReason::Stop);
            }
            if out.len() >= max_tokens || cached + 1 >= ctx {
                return Some(FinishReason::Length);
            }
            None
        };
        let mut tok = pick(&mut constraint, &mut logits, &history)?;
        let finish = 'generate: loop {
            let base = self.seq.cached.len();
            if let Some(f) = emit(tok, base, &mut out, &mut history) {
                break f;
            }
            // `tok` is emitted but not yet in the cache: feed it with the drafts that follow.
            // Under a constraint, the text its grammar forces after `tok` comes first.
            let forced = match (&self.spec, constraint.as_deref_mut()) {
                (Some(_), Some(c)) => c.forced(),
                _ => Vec::new(),
            };
            let draft = self.draft(&history, &forced, max_tokens - out.len(), base)?;
            let fed: Vec<u32> = std::iter::once(tok).chain(draft.iter().copied()).collect();
            let t = Instant::now();
            self.feed_generated(&fed, 0)?;
            if let Some(s) = &mut self.spec {
                s.state.observe_time(fed.len(), t.elapsed());
            }
            let mut rows = std::mem::take(&mut self.seq.logits);
            let (mut first, mut next) = (None, None);
            let mut accepted = 0;
            for (i, row) in rows.chunks_exact_mut(vocab).enumerate() {
                let s = pick(&mut constraint, row, &history)?;
                first = first.or(Some(s));
                if draft.get(i) != Some(&s) {
                    next = Some(s);
                    break;
                }
                accepted += 1;
                // The cache then holds `tok` and the drafts before this one.
                if let Some(f) = emit(s, base + 1 + i, &mut out, &mut history) {
                    self.seq.logits = rows;
                    self.seq.truncate(base + 1 + i);
                    self.account(draft.len(), accepted, first, &mut stats);
                    break 'generate f;
                }
            }
            self.seq.logits = rows;
            self.seq.truncate(base + 1 + accepted);
            self.account(draft.len(), accepted, first, &mut stats);
            // A draft row's sample is the next token whether or not the draft was refused.
            tok = next.expect("the last row is never a draft");
        };
        Ok(Generation {
            tokens: out,
            finish_reason: finish,
            prompt_tokens: prompt.len(),
            cached_tokens: common,
            prefill_secs,
            decode_secs: t1.elapsed().as_secs_f64(),
            spec: stats,
        })
    }

    /// Tokens to verify after the last of `history` (not yet in the cache, which holds
    /// `cached`), at most `left − 1` (the pass also yields the token after them) and what
    /// the context has room for: the tokens a constraint forces (`forced`) where they pay,
    /// else the mode's drafts. A proposal not worth verifying still teaches the controller
    /// whether it would have been taken (`shadow`).
    fn draft(
        &mut self,
        history: &[u32],
        forced: &[u32],
        left: usize,
        cached: usize,
    ) -> Result<Vec<u32>, SessionError> {
        let ctx = self.seq.ctx;
        let Some(s) = &mut self.spec else {
            return Ok(Vec::new());
        };
        // The pass feeds 1 + k tokens; decoding stops once the cache is one short of ctx.
        let room = ctx.saturating_sub(cached + 2).min(left.saturating_sub(1));
        let first = s.state.forced_first(forced, room, |c, n| c.draft_len(n));
        if !first.is_empty() {
            return Ok(first);
        }
        match s.cfg.mode {
            // A session's sequence decodes alone: `Auto` drafts as `Ngram`.
            SpecMode::Auto | SpecMode::Ngram => Ok(s
                .state
                .ngram(history, &s.cfg, room, |ctl, n| ctl.draft_len(n))
                .to_vec()),
            SpecMode::Draft => {
                let copied = s
                    .state
                    .copy_first(history, &s.cfg, room, |c, n| c.draft_len(n));
                if !copied.is_empty() {
                    return Ok(copied.to_vec());
                }
                let d = self.draft.as_mut().expect("set_speculation checked it");
                d.draft(&self.backend, &mut s.state, history, room, &mut s.probe_in)
            }
        }
    }

    /// Learn from a pass that verified `drafted` tokens and took `accepted` of them, `first`
    /// its first sampled token.
    fn account(
        &mut self,
        drafted: usize,
        accepted: usize,
        first: Option<u32>,
        stats: &mut SpecStats,
    ) {
        if let Some(s) = &mut self.spec {
            s.state.account(drafted, accepted, first, stats);
        }
    }

    pub fn free_blocks(&self) -> usize {
        self.seq.free_blocks()
    }
}

impl<B: Backend> DraftModel<B> {
    /// `model` drafting for `main`, with a cache of `ctx` tokens. Their embedding tables may
    /// differ in rows past the shared tokens (Qwen2.5-0.5B has 151,936, the 7B 152,064): a
    /// token one model lacks is never drafted (`propose`).
    pub(crate) fn new(
        backend: &B,
        model: Model<B>,
        main: &Model<B>,
        ctx: usize,
        kv: KvDType,
    ) -> Result<DraftModel<B>, SessionError> {
        let seq = SeqCache::new(backend, &model, ctx, 256, kv)?;
        let mut in_short = Vec::new();
        if let Some(ids) = model.short_head_tokens() {
            in_short.resize(model.vocab_size(), false);
            for &t in ids {
                in_short[t as usize] = true;
            }
        }
        Ok(DraftModel {
            model,
            seq,
            target_vocab: main.vocab_size(),
            in_short,
            stats: DraftStats::default(),
        })
    }

    /// Drafts for the sequence `history` from this model while `spec`'s controller finds
    /// drafting worth it: as long as the draft's run stays likely (`DraftRun`; at most `room`
    /// and `--draft-max`), timed for it; while drafting does not pay, a probe every
    /// `PROBE_EVERY` steps is left unverified (`spec`'s shadow) to keep the rate measured.
    pub(crate) fn draft(
        &mut self,
        backend: &B,
        spec: &mut SeqSpec,
        history: &[u32],
        room: usize,
        probe_in: &mut usize,
    ) -> Result<Vec<u32>, SessionError> {
        // The controller says whether drafting pays; how far is the draft's own run's
        // probability (`DraftRun`), which knows each proposal's odds where the controller
        // knows only the mean rate.
        let mut k = match spec.ctl.draft_len(room) {
            0 => 0,
            _ => spec.ctl.most(room),
        };
        let probe = probe_due(k, room, probe_in, spec.ctl.acceptance());
        if probe {
            k = 1;
        }
        if k == 0 {
            return Ok(Vec::new());
        }
        let (proposal, steps) = self.propose(backend, history, k)?;
        spec.ctl.observe_draft_time(steps.0, steps.1);
        self.stats.timed_tokens += steps.0 as u64;
        self.stats.timed_secs += steps.1.as_secs_f64();
        if probe {
            spec.set_shadow(proposal.first().copied());
            return Ok(Vec::new());
        }
        Ok(proposal)
    }

    /// The draft model's greedy continuation of `history`, `k` tokens: its cache keeps what it
    /// shares with `history` (the accepted part of its earlier drafts included) and computes
    /// the rest. Also the drafting steps it timed and how long they took: those of one or two
    /// tokens, what drafting costs while it goes on — not a first feed catching up on the
    /// prompt or on the tokens since the last probe, which would price every draft as a
    /// prefill and keep drafting off.
    fn propose(
        &mut self,
        backend: &B,
        history: &[u32],
        k: usize,
    ) -> Result<(Vec<u32>, (usize, Duration)), SessionError> {
        let common = self.seq.keep_prefix_of(history);
        // Room for the drafts in the draft's own cache (the same context as the session's).
        let k = k.min(self.seq.ctx.saturating_sub(history.len()));
        let mut out = Vec::with_capacity(k);
        let mut timed = (0, Duration::ZERO);
        if k == 0 {
            return Ok((out, timed));
        }
        let rest = &history[common..];
        // A token past the draft's vocabulary (padding the model itself sampled) cannot be fed
        // to it: this sequence gets no drafts from it.
        if out_of_vocab(rest, self.model.vocab_size()).is_some() {
            return Ok((out, timed));
        }
        let head = self.head_for(history);
        self.stats.proposals += 1;
        self.stats.short_head += u64::from(head == HeadRows::Short);
        let t = Instant::now();
        let row = self
            .seq
            .feed_head(backend, &self.model, rest, rest.len() - 1, false, head)?;
        // The token of a logits row's index.
        let tokens = match head {
            HeadRows::Short => self.model.short_head_tokens(),
            HeadRows::All => None,
        };
        let token_of = |i: u32| tokens.map_or(i, |ids| ids[i as usize]);
        let mut top = argmax(row);
        let mut run = crate::spec::DraftRun::new();
        let mut sure = run.goes_on(row, top);
        let mut next = token_of(top);
        if rest.len() <= 2 {
            timed = (1, t.elapsed());
        }
        // A proposal past the model's vocabulary (the draft's padding) ends the draft.
        let known = |t: u32| (t as usize) < self.target_vocab;
        if !known(next) {
            return Ok((out, timed));
        }
        out.push(next);
        while out.len() < k && sure {
            let t = Instant::now();
            let row = self
                .seq
                .feed_head(backend, &self.model, &[next], 0, true, head)?;
            top = argmax(row);
            sure = run.goes_on(row, top);
            next = token_of(top);
            timed = (timed.0 + 1, timed.1 + t.elapsed());
            if !known(next) {
                break;
            }
            out.push(next);
        }
        Ok((out, timed))
    }

    /// Bring the draft's cache up to `tokens` (no logits): what a proposal after them would
    /// otherwise compute first. A token the draft lacks leaves it to `propose` (which then
    /// makes none).
    fn follow(&mut self, backend: &B, tokens: &[u32]) -> Result<(), SessionError> {
        let common = self.seq.keep_prefix_of(tokens);
        let rest = &tokens[common..];
        if rest.is_empty() || out_of_vocab(rest, self.model.vocab_size()).is_some() {
            return Ok(());
        }
        self.seq
            .feed(backend, &self.model, rest, rest.len(), false)
            .map(|_| ())
    }

    /// The head a proposal after `history` takes (`short_head_serves`).
    fn head_for(&self, history: &[u32]) -> HeadRows {
        match short_head_serves(&self.in_short, history) {
            true => HeadRows::Short,
            false => HeadRows::All,
        }
    }
}

/// Whether a draft model's short head (`in_short`: per token, whether it holds it; empty
/// without one) serves a proposal after `history`: while at most one in `SHORT_HEAD_MISS_DIV`
/// of the text's last `SHORT_HEAD_WINDOW` tokens lies past it. English prose and code stay
/// nearly all within it, and a drafted token there reads less (Qwen2.5-Coder-0.5B at Q4_0:
/// 235 MB instead of 278 with the vocabulary's first 65,536 tokens, 7.5–8.2 ms a drafted
/// token against 8.5–9.1 in alternating runs); the few tokens it lacks cannot be drafted.
/// Chinese text spreads over the whole vocabulary and takes the whole head.
fn short_head_serves(in_short: &[bool], history: &[u32]) -> bool {
    if in_short.is_empty() {
        return false;
    }
    let recent = &history[history.len().saturating_sub(SHORT_HEAD_WINDOW)..];
    let outside = recent
        .iter()
        .filter(|&&t| !in_short.get(t as usize).is_some_and(|&b| b))
        .count();
    outside * SHORT_HEAD_MISS_DIV <= recent.len()
}

/// Tokens of the text looked at to choose a draft model's head (`short_head_serves`).
const SHORT_HEAD_WINDOW: usize = 64;
/// The short head serves while at most one of every this many of those tokens lies past it.
const SHORT_HEAD_MISS_DIV: usize = 12;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_come_less_often_as_fewer_drafts_are_taken() {
        assert_eq!(probe_interval(0.9), PROBE_EVERY);
        assert_eq!(probe_interval(0.5), PROBE_EVERY);
        assert_eq!(probe_interval(0.25), 2 * PROBE_EVERY);
        assert_eq!(probe_interval(0.1), 5 * PROBE_EVERY);
        assert_eq!(probe_interval(0.0), PROBE_MOST);
        // Due after the interval's steps without drafts; never while drafting or out of room.
        let mut probe_in = 3;
        assert!(!probe_due(2, 10, &mut probe_in, 0.0));
        assert!(!probe_due(0, 0, &mut probe_in, 0.0));
        assert!(!probe_due(0, 10, &mut probe_in, 0.0));
        assert!(!probe_due(0, 10, &mut probe_in, 0.0));
        assert!(probe_due(0, 10, &mut probe_in, 0.25));
        assert_eq!(probe_in, 2 * PROBE_EVERY);
    }

    #[test]
    fn short_head_serves_text_within_it() {
        // Tokens 0..100 of 200 in the short head.
        let inside: Vec<bool> = (0..200).map(|t| t < 100).collect();
        let text = |outside: usize, len: usize| -> Vec<u32> {
            (0..len)
                .map(|i| if i < outside { 150 } else { 7 })
                .collect()
        };
        // No short head.
        assert!(!short_head_serves(&[], &text(0, 64)));
        assert!(short_head_serves(&inside, &text(0, 64)));
        // 5 of 64 outside (5 × 12 ≤ 64) serve; 6 do not.
        assert!(short_head_serves(&inside, &text(5, 64)));
        assert!(!short_head_serves(&inside, &text(6, 64)));
        // Only the last 64 tokens count: of 94, the first 30 are not looked at.
        assert!(short_head_serves(&inside, &text(35, 94)));
        assert!(!short_head_serves(&inside, &text(36, 94)));
        // A short text: 1 of 12 serves, 2 of 12 do not; a token past the vocabulary is outside.
        assert!(short_head_serves(&inside, &text(1, 12)));
        assert!(!short_head_serves(&inside, &text(2, 12)));
        assert!(!short_head_serves(
            &inside,
            &[7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 9999, 9999]
        ));
    }
}
