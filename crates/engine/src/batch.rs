//! Many sequences at once: the scheduler's steps run through the model as one batch each, every
//! sampling row is sampled with its own request's sampler, and what happened comes back as
//! events. A server's engine thread owns one `BatchEngine` and calls `step` while there is work.
//!
//! Batch invariance: every kernel computes a token's row independently of the other rows in the
//! step (activations are quantized per token, integer sums are exact, and each row's float
//! accumulation order does not depend on the tile it lands in), so a greedy answer is the same
//! whatever else shares the batch — tested below against answers computed one at a time.

use crate::constraint::{constrained_pick, ConstraintStats, TokenConstraint};
use crate::sampler::{Sampler, SamplingParams};
use crate::scheduler::{SchedConfig, Scheduler, SeqId, Step, SubmitError};
use crate::session::{out_of_vocab, FinishReason};
use crate::session::{DraftModel, SessionError, PROBE_EVERY};
use crate::spec::{Controller, SeqSpec, SpecConfig, SpecMode, SpecStats, StepCost};
use std::collections::HashMap;
use suanli_backend::{Backend, BackendError, KvDType, KvPages};
use suanli_models::{Model, Scratch};

pub struct Request {
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    pub max_tokens: usize,
    /// Report each sampled token's log-probability and this many alternatives.
    pub logprobs: Option<usize>,
    /// Report every prompt token's log-probability (after the first) and this many
    /// alternatives, from the model's distribution. The prompt is then always computed, never
    /// taken from the prefix cache.
    pub prompt_logprobs: Option<usize>,
    /// What the answer must match (a JSON schema, a grammar, a tool call), if anything.
    pub constraint: Option<Box<dyn TokenConstraint>>,
}

/// Log-probabilities of a sampled token and of the most likely alternatives, in the
/// distribution the sampler drew from (after logit bias and penalties) at temperature 1.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprobs {
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Log-probabilities of prompt tokens 1.. (token 0 has no context), once, before the first
    /// token, when the request asked for them.
    PromptLogprobs(Vec<TokenLogprobs>),
    /// A new token (never an end-of-generation token).
    Token {
        id: u32,
        logprobs: Option<TokenLogprobs>,
    },
    Done {
        reason: FinishReason,
        prompt_tokens: usize,
        cached_tokens: usize,
        completion_tokens: usize,
    },
    /// The sequence cannot go on (its logits are not finite numbers: a broken weight or an
    /// overflow along its own context). It has been dropped; the others carry on.
    Failed(String),
}

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error(transparent)]
    Submit(#[from] SubmitError),
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    BadToken { id: u32, vocab: usize },
    #[error("max_tokens must be at least 1")]
    NoTokens,
}

struct SeqState {
    sampler: Sampler,
    history: Vec<u32>,
    prompt_len: usize,
    generated: usize,
    max_tokens: usize,
    cached_tokens: usize,
    logprobs: Option<usize>,
    prompt_logprobs: Option<usize>,
    /// Per prompt position (from 1), filled as prompt chunks run; sent once complete.
    prompt_lp: Vec<Option<TokenLogprobs>>,
    prompt_lp_sent: bool,
    constraint: Option<Box<dyn TokenConstraint>>,
    /// Speculative decoding: what this sequence has learned.
    spec: Option<SeqSpec>,
}

pub struct BatchEngine<B: Backend> {
    pub backend: B,
    pub model: Model<B>,
    kv: KvPages<B::KvBuffer>,
    scratch: Scratch<B>,
    sched: Scheduler,
    seqs: HashMap<SeqId, SeqState>,
    eog: Vec<u32>,
    logits: Vec<f32>,
    constraint_stats: ConstraintStats,
    /// Speculative decoding with n-gram drafts (`set_speculation`), the measured cost of a step
    /// by its rows, and what it did so far.
    spec: Option<SpecConfig>,
    step_cost: StepCost,
    spec_stats: SpecStats,
    kv_dtype: KvDType,
    /// `SpecMode::Draft`: the draft model, run for a sequence decoding alone (in a busier batch
    /// a row costs more than a draft model's tokens win; n-gram copies still draft there).
    draft: Option<DraftModel<B>>,
    /// Steps until a sequence whose model drafts do not pay proposes one anyway (measured,
    /// not verified), as a session does.
    probe_in: usize,
    /// Why the draft model was dropped (a failure there never fails a request), once.
    draft_error: Option<String>,
}

impl<B: Backend> BatchEngine<B> {
    /// `cfg.num_blocks` blocks of `cfg.block_size` positions are allocated for the KV cache;
    /// the scratch holds `cfg.max_step_tokens` rows. `eog`: tokens that end a generation.
    pub fn new(
        backend: B,
        model: Model<B>,
        cfg: SchedConfig,
        kv_dtype: KvDType,
        eog: Vec<u32>,
    ) -> Result<BatchEngine<B>, BackendError> {
        let kv = backend.alloc_kv(model.kv_spec(cfg.num_blocks, cfg.block_size, kv_dtype))?;
        let scratch = model.alloc_scratch(&backend, cfg.max_step_tokens.max(1))?;
        let step_cost = StepCost::new(cfg.max_step_tokens);
        let mut sched = Scheduler::new(cfg);
        sched.set_window(model.cfg.window_everywhere());
        Ok(BatchEngine {
            backend,
            model,
            kv,
            scratch,
            sched,
            seqs: HashMap::new(),
            eog,
            logits: Vec::new(),
            constraint_stats: ConstraintStats::default(),
            spec: None,
            step_cost,
            spec_stats: SpecStats::default(),
            kv_dtype,
            draft: None,
            probe_in: PROBE_EVERY,
            draft_error: None,
        })
    }

    /// The model drafting for `SpecMode::Draft` (the same tokenizer; its vocabulary may differ
    /// by padding rows, `DraftModel::new`), with its own cache of one context, run on this
    /// engine's backend.
    pub fn set_draft_model(&mut self, model: Model<B>) -> Result<(), SessionError> {
        let ctx = self.sched.config().max_ctx;
        let d = DraftModel::new(&self.backend, model, &self.model, ctx, self.kv_dtype)?;
        self.draft = Some(d);
        Ok(())
    }

    /// Why the draft model stopped drafting, if it failed since the last call.
    pub fn take_draft_error(&mut self) -> Option<String> {
        self.draft_error.take()
    }

    /// Speculative decoding for the sequences submitted from now on (`None`: off). Each
    /// decoding sequence drafts as far as its acceptance rate beats what one more row costs the
    /// whole step, so a busy batch drafts little; with a draft model (`set_draft_model`),
    /// n-gram copies come first and the model drafts for a sequence decoding alone. Answers
    /// are unchanged.
    pub fn set_speculation(&mut self, cfg: Option<SpecConfig>) -> Result<(), String> {
        if let Some(c) = &cfg {
            c.validate()?;
            if c.mode == SpecMode::Draft && self.draft.is_none() {
                return Err("speculation with a draft model needs the draft model".into());
            }
        }
        self.spec = cfg;
        Ok(())
    }

    /// Drafted and accepted tokens so far (speculative decoding).
    pub fn spec_stats(&self) -> SpecStats {
        self.spec_stats
    }

    /// Give each decoding sequence its drafts for the next step.
    fn propose_drafts(&mut self) {
        let Some(cfg) = &self.spec else { return };
        let decoding: Vec<SeqId> = self
            .seqs
            .keys()
            .copied()
            .filter(|id| self.sched.decoding(*id))
            .collect();
        let row_cost = self.step_cost.row_cost(decoding.len());
        // The draft model's tokens are paid by the whole step: only for a sequence alone.
        let alone = decoding.len() == 1 && self.sched.running() == 1;
        // `Auto` drafts only while a row costs little next to a token (the step is bound by
        // reading the weights): in a busy batch not even a grammar's forced text pays.
        if cfg.mode == SpecMode::Auto && !alone && row_cost >= cfg.auto_row_cost {
            return;
        }
        for &id in &decoding {
            let Some(st) = self.seqs.get_mut(&id) else {
                continue;
            };
            let Some(spec) = &mut st.spec else {
                continue;
            };
            let room = st.max_tokens.saturating_sub(st.generated + 1);
            let against = |ctl: &Controller, n: usize| ctl.draft_len_against(n, row_cost);
            // Under a constraint, the text its grammar forces comes first.
            let forced = st
                .constraint
                .as_mut()
                .map(|c| c.forced())
                .unwrap_or_default();
            let first = spec.forced_first(&forced, room, against);
            let draft = match cfg.mode {
                _ if !first.is_empty() => first,
                SpecMode::Auto | SpecMode::Ngram => {
                    spec.ngram(&st.history, cfg, room, against).to_vec()
                }
                SpecMode::Draft => {
                    let copied = spec.copy_first(&st.history, cfg, room, against).to_vec();
                    let model = self.draft.as_mut().filter(|_| copied.is_empty() && alone);
                    let by_model = model.map(|d| {
                        d.draft(&self.backend, spec, &st.history, room, &mut self.probe_in)
                    });
                    match by_model {
                        None => copied,
                        Some(Ok(p)) => p,
                        Some(Err(e)) => {
                            self.draft_error = Some(e.to_string());
                            self.draft = None;
                            Vec::new()
                        }
                    }
                }
            };
            if !draft.is_empty() {
                self.sched.set_draft(id, draft);
            }
        }
    }

    /// Give back the backend and model (the KV cache is freed).
    pub fn into_parts(self) -> (B, Model<B>) {
        (self.backend, self.model)
    }

    /// The KV cache's element type.
    pub fn kv_dtype(&self) -> KvDType {
        self.kv_dtype
    }

    pub fn scheduler(&self) -> &Scheduler {
        &self.sched
    }

    /// Record the prefix cache's changes as KV events, blocks named by `hasher`.
    pub fn enable_kv_events(&mut self, hasher: crate::kv_events::BlockHasher) {
        self.sched.enable_kv_events(hasher);
    }

    /// The KV events since the last call, oldest first.
    pub fn take_kv_events(&mut self) -> Vec<crate::kv_events::KvEvent> {
        self.sched.take_kv_events()
    }

    /// What constrained sequences have cost so far (their checks and masks).
    pub fn constraint_stats(&self) -> ConstraintStats {
        self.constraint_stats
    }

    /// Sequences admitted or waiting.
    pub fn active(&self) -> usize {
        self.seqs.len()
    }

    pub fn submit(&mut self, id: SeqId, req: Request) -> Result<(), BatchError> {
        let vocab = self.model.vocab_size();
        if let Some(id) = out_of_vocab(&req.prompt, vocab) {
            return Err(BatchError::BadToken { id, vocab });
        }
        if req.max_tokens == 0 {
            return Err(BatchError::NoTokens);
        }
        self.sched.submit_with(
            id,
            req.prompt.clone(),
            req.max_tokens,
            req.prompt_logprobs.is_some(),
        )?;
        self.seqs.insert(
            id,
            SeqState {
                sampler: Sampler::new(req.params),
                prompt_len: req.prompt.len(),
                history: req.prompt,
                generated: 0,
                max_tokens: req.max_tokens,
                cached_tokens: 0,
                logprobs: req.logprobs,
                prompt_logprobs: req.prompt_logprobs,
                prompt_lp: Vec::new(),
                prompt_lp_sent: false,
                constraint: req.constraint,
                spec: self.spec.as_ref().map(SeqSpec::new),
            },
        );
        Ok(())
    }

    /// Drop a sequence now (client gone, stop string seen): its KV blocks are freed. Returns
    /// what it had used (as a `Done` with reason `Stop`), or `None` for an unknown id.
    pub fn cancel(&mut self, id: SeqId) -> Option<Event> {
        self.sched.finish(id);
        self.seqs.remove(&id).map(|st| Event::Done {
            reason: FinishReason::Stop,
            prompt_tokens: st.prompt_len,
            cached_tokens: st.cached_tokens,
            completion_tokens: st.generated,
        })
    }

    /// Run one step. Returns the events of the sequences that sampled; an empty list when
    /// there was nothing to do.
    pub fn step(&mut self) -> Result<Vec<(SeqId, Event)>, BackendError> {
        self.propose_drafts();
        let step: Step = self.sched.schedule();
        if step.is_empty() {
            return Ok(Vec::new());
        }
        let bs = self.sched.config().block_size;
        let plan = step.plan(bs);
        let vocab = self.model.vocab_size();
        // When every row to sample can draw from its largest logits alone (greedy, top-k or
        // top-p, without bias or log-probabilities; `Sampler::top_candidates`), the backend may
        // select them itself: a GPU then sends a few candidates per row instead of whole
        // vocabularies. Failing that,
        // when every row is greedy or a plain temperature/min-p draw, the backend may draw the
        // tokens itself. Rows are the logits rows, in item order.
        let seqs = &self.seqs;
        // Drafted rows are sampled one after another on the host (each after the ones before
        // it were taken).
        let drafted = step.items.iter().any(|it| it.draft > 0);
        let sampled_rows = || {
            step.items
                .iter()
                .filter(|it| it.sample || it.logits_all)
                .map(|it| {
                    let st = seqs.get(&it.seq)?;
                    // A constrained row may need its whole vocabulary masked.
                    (!it.logits_all && st.logprobs.is_none() && st.constraint.is_none())
                        .then_some(st)
                })
        };
        let candidates = sampled_rows()
            .try_fold((0, false), |(k, mass): (usize, bool), st| {
                let st = st?;
                let need = st.sampler.top_candidates(&st.history)?;
                Some((k.max(need.k), mass || need.mass))
            })
            .filter(|&(k, _)| k > 0 && !plan.logits_rows.is_empty() && !drafted);
        let draws: Option<Vec<suanli_backend::Draw>> = if candidates.is_none() && !drafted {
            sampled_rows()
                .map(|st| st?.sampler.device_draw())
                .collect::<Option<Vec<_>>>()
                .filter(|d| !d.is_empty())
        } else {
            None
        };
        self.logits.resize(plan.logits_rows.len() * vocab, 0.0);
        let (b, kv, scratch, logits) = (
            &self.backend,
            &mut self.kv,
            &mut self.scratch,
            &mut self.logits,
        );
        let model = &self.model;
        let t_step = std::time::Instant::now();
        let picks = if let Some((k, mass)) = candidates {
            let top = |b: &B, h: &_, rows: &[u32], head: &_| {
                let Some(top) = b.top_logits(h, rows, head, k, mass)? else {
                    return Ok(None);
                };
                // A nucleus wider than the candidates needs the whole rows after all.
                let fits = sampled_rows().enumerate().all(|(r, st)| {
                    let cands = top.pairs.get(r * k..(r + 1) * k).unwrap_or(&[]);
                    let mass = top.mass.get(r).copied().unwrap_or(f32::NAN);
                    st.is_some_and(|st| st.sampler.nucleus_fits(cands, mass))
                });
                Ok(fits.then_some(top))
            };
            match model.forward_pick(b, &plan, kv, scratch, logits, top)? {
                Some(top) => Picks::Top(top),
                None => Picks::Logits,
            }
        } else if let Some(draws) = &draws {
            let draw = |b: &B, h: &_, rows: &[u32], head: &_| b.sample_logits(h, rows, head, draws);
            match model.forward_pick(b, &plan, kv, scratch, logits, draw)? {
                Some(ids) => Picks::Drawn(ids),
                None => Picks::Logits,
            }
        } else {
            self.model.forward(b, &plan, kv, scratch, logits)?;
            Picks::Logits
        };
        self.step_cost.observe(plan.tokens.len(), t_step.elapsed());
        if let [only] = &step.items[..] {
            if let Some(spec) = self.seqs.get_mut(&only.seq).and_then(|st| st.spec.as_mut()) {
                spec.observe_time(plan.tokens.len(), t_step.elapsed());
            }
        }
        let mut sampled = Vec::new();
        let mut events = Vec::new();
        let mut done = Vec::new();
        let mut failed = Vec::new();
        let mut row = 0;
        'item: for it in &step.items {
            let rows = if it.logits_all {
                it.tokens.len()
            } else if it.sample {
                it.draft + 1
            } else {
                0
            };
            let first = row;
            row += rows;
            let Some(st) = self.seqs.get_mut(&it.seq) else {
                continue;
            };
            if it.logits_all {
                // Row i predicts the token at position start + i + 1.
                let top = st.prompt_logprobs.unwrap_or(0);
                st.prompt_lp.resize(st.prompt_len, None);
                for i in 0..it.tokens.len() {
                    let next = it.start + i + 1;
                    if next < st.prompt_len {
                        let l = &self.logits[(first + i) * vocab..(first + i + 1) * vocab];
                        let (logprob, top) = crate::sampler::logprobs(l, st.history[next], top);
                        st.prompt_lp[next] = Some(TokenLogprobs { logprob, top });
                    }
                }
            }
            if !it.sample {
                continue;
            }
            if st.prompt_logprobs.is_some() && !st.prompt_lp_sent {
                st.prompt_lp_sent = true;
                let lps = std::mem::take(&mut st.prompt_lp);
                events.push((
                    it.seq,
                    Event::PromptLogprobs(lps.into_iter().skip(1).flatten().collect()),
                ));
            }
            // The rows to sample: the last one, or a decode row and its drafts' rows, taken in
            // turn while each sample equals the draft after it.
            let r0 = first + rows - 1 - it.draft;
            let mut new = Vec::with_capacity(it.draft + 1);
            let mut accepted = 0;
            for i in 0..=it.draft {
                let r = r0 + i;
                let nonfinite = |detail: String| {
                    format!(
                        "the model produced a non-finite logit{detail} at position {}",
                        st.history.len()
                    )
                };
                let tok = match &picks {
                    Picks::Top(top) => {
                        let cands = &top.pairs[r * top.k..(r + 1) * top.k];
                        if cands[0].0 == u32::MAX {
                            failed.push((it.seq, nonfinite(String::new())));
                            continue 'item;
                        }
                        st.sampler
                            .sample_top(cands, top.mass.get(r).copied(), &st.history)
                    }
                    Picks::Drawn(ids) => {
                        if ids[r] == u32::MAX {
                            failed.push((it.seq, nonfinite(String::new())));
                            continue 'item;
                        }
                        st.sampler.commit_device_draw();
                        ids[r]
                    }
                    Picks::Logits => {
                        let logits = &mut self.logits[r * vocab..(r + 1) * vocab];
                        if let Some(bad) = suanli_core::scan::first_nonfinite(logits) {
                            failed.push((it.seq, nonfinite(format!(" ({bad})"))));
                            continue 'item;
                        }
                        match st.constraint.as_deref_mut() {
                            None => st.sampler.sample(logits, &st.history),
                            Some(c) => {
                                let sampler = &mut st.sampler;
                                sampler.prepare(logits, &st.history);
                                let t0 = std::time::Instant::now();
                                let picked = constrained_pick(c, logits, |l| sampler.pick(l));
                                let cs = &mut self.constraint_stats;
                                cs.secs += t0.elapsed().as_secs_f64();
                                cs.tokens += 1;
                                match picked {
                                    Ok((tok, masked)) => {
                                        cs.masks += u64::from(masked);
                                        tok
                                    }
                                    Err(why) => {
                                        failed.push((
                                            it.seq,
                                            format!("{}: {why}", crate::constraint::FAILED),
                                        ));
                                        continue 'item;
                                    }
                                }
                            }
                        }
                    }
                };
                new.push(tok);
                let ctx_full = st.history.len() + 1 >= self.sched.config().max_ctx;
                let reason = if self.eog.contains(&tok) {
                    Some(FinishReason::Stop)
                } else {
                    st.history.push(tok);
                    st.generated += 1;
                    let logits = &self.logits;
                    let logprobs = st.logprobs.map(|n| {
                        let (logprob, top) =
                            crate::sampler::logprobs(&logits[r * vocab..(r + 1) * vocab], tok, n);
                        TokenLogprobs { logprob, top }
                    });
                    events.push((it.seq, Event::Token { id: tok, logprobs }));
                    (st.generated >= st.max_tokens || ctx_full).then_some(FinishReason::Length)
                };
                if let Some(reason) = reason {
                    done.push((it.seq, reason));
                    break;
                }
                let draft = it.tokens.len() - it.draft + i;
                if i == it.draft || it.tokens[draft] != tok {
                    break;
                }
                accepted += 1;
            }
            if let Some(spec) = &mut st.spec {
                spec.account(
                    it.draft,
                    accepted,
                    new.first().copied(),
                    &mut self.spec_stats,
                );
            }
            sampled.push((it.seq, new));
        }
        for p in self.sched.complete(&step, &sampled) {
            if let Some(st) = self.seqs.get_mut(&p.seq) {
                st.cached_tokens = p.cached_prompt_tokens;
            }
        }
        for (id, why) in failed {
            self.seqs.remove(&id);
            self.sched.finish(id);
            events.push((id, Event::Failed(why)));
        }
        for (id, reason) in done {
            if let Some(st) = self.seqs.remove(&id) {
                events.push((
                    id,
                    Event::Done {
                        reason,
                        prompt_tokens: st.prompt_len,
                        cached_tokens: st.cached_tokens,
                        completion_tokens: st.generated,
                    },
                ));
            }
            self.sched.finish(id);
        }
        Ok(events)
    }
}

/// How a step's tokens are picked: from candidates the backend selected, as tokens it drew, or
/// on the host from whole logits.
enum Picks {
    /// Each logits row's largest logits (and with top-p, its mass).
    Top(suanli_backend::TopLogits),
    Drawn(Vec<u32>),
    Logits,
}
