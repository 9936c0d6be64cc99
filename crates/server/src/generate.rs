//! One HTTP request's generation, shared by chat and completions: its choices (`n` per prompt)
//! are submitted to the engine thread as separate sequences, and their events come back on one
//! channel and are turned into text deltas — complete UTF-8 only, with stop strings held back
//! until they are known not to match, so a streamed answer concatenates to the non-streamed one.
//! Dropping a `Generation` (the client went away) cancels whatever is still running.

use crate::api::error::ApiError;
use crate::api::params::GenParams;
use crate::state::AppState;
use crate::worker::{Out, Worker};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use suanli_engine::batch::{BatchError, Event, Request};
use suanli_engine::scheduler::{SeqId, SubmitError};
use suanli_engine::stop::{StopMatcher, StopStep};
use suanli_tokenizer::{StreamDecoder, Tokenizer};
use tokio::sync::mpsc;

#[derive(Clone, Debug)]
pub struct LogprobEntry {
    pub id: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// New text of one choice (possibly empty when only the finish reason is new).
#[derive(Debug, Default)]
pub struct Delta {
    pub index: usize,
    pub text: String,
    pub logprobs: Vec<LogprobEntry>,
    pub finish: Option<&'static str>,
    /// Once, before any text, when prompt log-probabilities were asked for: the prompt's
    /// tokens, the first without a log-probability.
    pub prompt_logprobs: Option<Vec<(u32, Option<LogprobEntry>)>>,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub cached_tokens: usize,
}

impl Usage {
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        })
    }
}

struct Choice {
    seq: SeqId,
    /// Kept only when prompt log-probabilities were asked for.
    prompt_ids: Vec<u32>,
    /// Index of the prompt it answers (prompt tokens are counted once per prompt).
    prompt: usize,
    prompt_tokens: usize,
    decoder: StreamDecoder,
    stop: StopMatcher,
    pending_logprobs: Vec<LogprobEntry>,
    completion_tokens: usize,
    cached_tokens: usize,
    /// The client has been told how it ended.
    finished: bool,
    /// The engine has let go of it.
    closed: bool,
}

pub struct Generation {
    worker: Arc<Worker>,
    tokenizer: Arc<Tokenizer>,
    rx: mpsc::UnboundedReceiver<(SeqId, Out)>,
    choices: Vec<Choice>,
    by_seq: HashMap<SeqId, usize>,
    ready: VecDeque<Delta>,
    /// The access log's note for this request: its token counts once it ends.
    note: Option<crate::access_log::Note>,
}

impl Generation {
    /// Submit `n` choices for each prompt. `prompt_param` names the prompt's field in errors.
    pub async fn start(
        st: &AppState,
        prompts: Vec<Vec<u32>>,
        p: &GenParams,
        prompt_param: &'static str,
    ) -> Result<Generation, ApiError> {
        let max_ctx = st.max_ctx;
        for prompt in &prompts {
            if prompt.is_empty() {
                return Err(ApiError::param(prompt_param, "the prompt is empty"));
            }
            if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= st.vocab) {
                return Err(ApiError::param(
                    prompt_param,
                    format!("token id {bad} is outside the vocabulary (0..{})", st.vocab),
                ));
            }
            if prompt.len() >= max_ctx {
                return Err(ApiError::param(
                    prompt_param,
                    format!(
                        "this server's context is {max_ctx} tokens; the prompt alone has {} tokens",
                        prompt.len()
                    ),
                ));
            }
            if let Some(m) = p.max_tokens.filter(|m| prompt.len() + m > max_ctx) {
                return Err(ApiError::param(
                    "max_tokens",
                    format!(
                        "this server's context is {max_ctx} tokens; {} in the prompt and {m} to generate do not fit",
                        prompt.len()
                    ),
                ));
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let mut g = Generation {
            worker: st.worker.clone(),
            tokenizer: st.tokenizer.clone(),
            rx,
            choices: Vec::new(),
            by_seq: HashMap::new(),
            ready: VecDeque::new(),
            note: crate::access_log::Note::current(),
        };
        for (pi, prompt) in prompts.into_iter().enumerate() {
            for j in 0..p.n {
                let mut sampling = p.sampling.clone();
                // Choices of one request differ, yet each stays reproducible from the seed.
                sampling.seed = sampling.seed.map(|s| s.wrapping_add(j as u64));
                let seq = g.worker.new_id();
                let req = Request {
                    max_tokens: p.max_tokens.unwrap_or(max_ctx - prompt.len()),
                    prompt: prompt.clone(),
                    params: sampling,
                    logprobs: p.logprobs,
                    prompt_logprobs: p.prompt_logprobs,
                    constraint: p.constraint.as_ref().map(|c| {
                        Box::new(c.constraint()) as Box<dyn suanli_engine::TokenConstraint>
                    }),
                };
                let prompt_ids = if p.prompt_logprobs.is_some() {
                    prompt.clone()
                } else {
                    Vec::new()
                };
                let prompt_tokens = prompt.len();
                // A prompt of token ids may end inside a character; the answer completes it.
                let tail: Vec<u8> = prompt[prompt.len().saturating_sub(4)..]
                    .iter()
                    .flat_map(|&t| st.tokenizer.token_bytes(t).iter().copied())
                    .collect();
                let decoder = if p.echo {
                    StreamDecoder::new()
                } else {
                    StreamDecoder::continuing(&tail)
                };
                // On error, dropping `g` cancels the choices submitted so far.
                g.worker
                    .submit(seq, req, tx.clone())
                    .await
                    .map_err(|e| submit_error(e, prompt_param))?;
                g.by_seq.insert(seq, g.choices.len());
                g.choices.push(Choice {
                    seq,
                    prompt_ids,
                    prompt: pi,
                    prompt_tokens,
                    decoder,
                    stop: StopMatcher::new(p.stop.clone()),
                    pending_logprobs: Vec::new(),
                    completion_tokens: 0,
                    cached_tokens: 0,
                    finished: false,
                    closed: false,
                });
            }
        }
        Ok(g)
    }

    pub fn n_choices(&self) -> usize {
        self.choices.len()
    }

    /// The next delta; `None` once every choice has finished.
    pub async fn next(&mut self) -> Option<Result<Delta, ApiError>> {
        loop {
            if let Some(d) = self.ready.pop_front() {
                return Some(Ok(d));
            }
            if self.choices.iter().all(|c| c.closed) {
                return None;
            }
            let next = tokio::time::timeout(std::time::Duration::from_secs(5), self.rx.recv());
            let Ok(received) = next.await else {
                // Quiet for a while: normal in a queue or a long prefill, not when the engine
                // is stuck in one step.
                if let Some(d) = self.worker.clock.stalled() {
                    self.abandon();
                    return Some(Err(ApiError::internal(format!(
                        "the engine has been stuck in one step for {} s",
                        d.as_secs()
                    ))));
                }
                continue;
            };
            let Some((seq, out)) = received else {
                self.close_all();
                return Some(Err(ApiError::internal("the engine stopped")));
            };
            let Some(&i) = self.by_seq.get(&seq) else {
                continue;
            };
            match out {
                Out::Failed(msg) => {
                    self.close_all();
                    return Some(Err(ApiError::internal(format!("the engine failed: {msg}"))));
                }
                Out::Event(Event::Failed(why)) => {
                    // This request fails (its other choices are cancelled); the engine goes on
                    // serving everyone else.
                    self.choices[i].closed = true;
                    self.abandon();
                    // A grammar whose matcher gave up (past llguidance's per-token limits) is
                    // the request's doing, not the server's.
                    if why.starts_with(suanli_engine::constraint::FAILED) {
                        return Some(Err(ApiError::invalid(why)));
                    }
                    return Some(Err(ApiError::internal(why)));
                }
                Out::Event(ev) => self.on_event(i, ev),
            }
        }
    }

    fn on_event(&mut self, i: usize, ev: Event) {
        let tok = &self.tokenizer;
        let c = &mut self.choices[i];
        match ev {
            Event::PromptLogprobs(lps) => {
                let ids = std::mem::take(&mut c.prompt_ids);
                let mut items: Vec<(u32, Option<LogprobEntry>)> =
                    ids.first().map(|&t| (t, None)).into_iter().collect();
                items.extend(ids.iter().skip(1).zip(lps).map(|(&id, lp)| {
                    (
                        id,
                        Some(LogprobEntry {
                            id,
                            logprob: lp.logprob,
                            top: lp.top,
                        }),
                    )
                }));
                self.ready.push_back(Delta {
                    index: i,
                    prompt_logprobs: Some(items),
                    ..Delta::default()
                });
            }
            Event::Token { id, logprobs } => {
                if c.finished {
                    return; // generated before the engine saw our cancel
                }
                c.completion_tokens += 1;
                if let Some(lp) = logprobs {
                    c.pending_logprobs.push(LogprobEntry {
                        id,
                        logprob: lp.logprob,
                        top: lp.top,
                    });
                }
                let piece = c.decoder.push(tok, id);
                match c.stop.push(&piece) {
                    StopStep::Emit(text) => {
                        if !text.is_empty() {
                            self.ready.push_back(Delta {
                                index: i,
                                text,
                                logprobs: std::mem::take(&mut c.pending_logprobs),
                                ..Delta::default()
                            });
                        }
                    }
                    StopStep::Stop(text) => {
                        c.finished = true;
                        self.worker.cancel(c.seq, "stop");
                        self.ready.push_back(Delta {
                            index: i,
                            text,
                            logprobs: std::mem::take(&mut c.pending_logprobs),
                            finish: Some("stop"),
                            ..Delta::default()
                        });
                    }
                }
            }
            Event::Failed(_) => c.closed = true,
            Event::Done {
                reason,
                cached_tokens,
                ..
            } => {
                c.closed = true;
                c.cached_tokens = cached_tokens;
                if c.finished {
                    return;
                }
                c.finished = true;
                let rest = c.decoder.finish();
                let (text, finish) = match c.stop.push(&rest) {
                    StopStep::Emit(s) => (s + &c.stop.finish(), reason.as_str()),
                    StopStep::Stop(s) => (s, "stop"),
                };
                self.ready.push_back(Delta {
                    index: i,
                    text,
                    logprobs: std::mem::take(&mut c.pending_logprobs),
                    finish: Some(finish),
                    ..Delta::default()
                });
            }
        }
    }

    /// Cancel whatever is still running and consider every choice ended.
    fn abandon(&mut self) {
        for c in self.choices.iter_mut().filter(|c| !c.closed) {
            self.worker.cancel(c.seq, "cancelled");
        }
        self.close_all();
    }

    fn close_all(&mut self) {
        for c in &mut self.choices {
            c.closed = true;
            c.finished = true;
        }
    }

    /// Token counts so far (final once `next` has returned `None`).
    pub fn usage(&self) -> Usage {
        let mut u = Usage::default();
        let mut seen = Vec::new();
        for c in &self.choices {
            if !seen.contains(&c.prompt) {
                seen.push(c.prompt);
                u.prompt_tokens += c.prompt_tokens;
                u.cached_tokens += c.cached_tokens;
            }
            u.completion_tokens += c.completion_tokens;
        }
        u
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        if let Some(n) = &self.note {
            n.set(self.usage());
        }
        for c in self.choices.iter().filter(|c| !c.closed) {
            self.worker.cancel(c.seq, "cancelled");
        }
    }
}

fn submit_error(e: Option<BatchError>, prompt_param: &'static str) -> ApiError {
    match e {
        None => ApiError::overloaded("the server is shutting down"),
        Some(BatchError::Submit(SubmitError::QueueFull(n))) => ApiError::overloaded(format!(
            "the server is busy ({n} requests waiting); retry later"
        )),
        Some(BatchError::Submit(
            e @ (SubmitError::TooLong { .. } | SubmitError::TooBig { .. }),
        )) => ApiError::param(prompt_param, e.to_string()),
        Some(BatchError::Submit(SubmitError::Empty)) => {
            ApiError::param(prompt_param, "the prompt is empty")
        }
        Some(BatchError::BadToken { id, vocab }) => ApiError::param(
            prompt_param,
            format!("token id {id} is outside the vocabulary (0..{vocab})"),
        ),
        Some(BatchError::NoTokens) => {
            ApiError::param("max_tokens", "`max_tokens` must be at least 1")
        }
        Some(e @ BatchError::Submit(SubmitError::Duplicate(_))) => {
            ApiError::internal(e.to_string())
        }
    }
}
