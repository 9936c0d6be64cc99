//! `POST /v1/completions`: the prompt is raw text (control-token strings in it are parsed, as
//! the client writes the whole prompt), a list of texts, token ids, or lists of token ids.

use super::error::ApiError;
use super::params::{gen_params, Body, MAX_N};
use super::stream::{collect, sse, Envelope, Shape};
use super::{begin, blocking, read_body};
use crate::generate::{Delta, Generation, LogprobEntry};
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// Most alternatives per token for completions' integer `logprobs`.
const MAX_LOGPROBS: i64 = 20;
/// Most prompts × choices in one request.
const MAX_CHOICES: usize = 4 * MAX_N;

pub async fn handler(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let b = read_body(body)?;
    begin(&st, &b)?;
    let mut p = gen_params(&b, st.vocab, st.max_ctx)?;
    if let Some(a) = super::structured::asked(&b)? {
        p.constraint = Some(super::structured::compile(&st, a).await?);
    }
    p.logprobs = b.int_in("logprobs", 0, MAX_LOGPROBS)?.map(|n| n as usize);
    let echo = b.bool("echo")?.unwrap_or(false);
    p.echo = echo;
    if echo {
        // The prompt's tokens get log-probabilities too (its first token has none).
        p.prompt_logprobs = p.logprobs;
    }
    if b.get("suffix").is_some() {
        return Err(ApiError::param("suffix", "`suffix` is not supported"));
    }
    if let Some(bo) = b.int_in("best_of", 1, MAX_N as i64)? {
        if bo as usize != p.n {
            return Err(ApiError::param(
                "best_of",
                "`best_of` must equal `n` when given",
            ));
        }
    }
    let st2 = st.clone();
    let prompts = blocking(move || prompts(&st2, &b)).await?;
    if prompts.len() * p.n > MAX_CHOICES {
        return Err(ApiError::param(
            "n",
            format!("prompts × n may be at most {MAX_CHOICES}"),
        ));
    }
    let echoes: Vec<String> = prompts
        .iter()
        .map(|ids| {
            if echo {
                st.tokenizer.decode(ids)
            } else {
                String::new()
            }
        })
        .collect();
    let g = Generation::start(&st, prompts, &p, "prompt").await?;
    let n = p.n;
    let mut shape = CompletionShape {
        env: Envelope::new(
            st.clone(),
            "cmpl",
            "text_completion",
            "text_completion",
            p.include_usage,
        ),
        echo_logprobs: p.prompt_logprobs.is_some(),
        // Choice i answers prompt i / n. With prompt log-probabilities, offsets count from the
        // prompt's first token; otherwise from the end of the echoed text.
        offsets: (0..g.n_choices())
            .map(|i| {
                if p.prompt_logprobs.is_some() {
                    0
                } else {
                    echoes[i / n].len()
                }
            })
            .collect(),
        echoes: (0..g.n_choices()).map(|i| echoes[i / n].clone()).collect(),
    };
    if p.stream {
        return Ok(sse(g, shape));
    }
    let (choices, usage) = collect(g).await?;
    let choices: Vec<Value> = choices
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let mut items = c.prompt_logprobs.unwrap_or_default();
            items.extend(c.logprobs.into_iter().map(|e| (e.id, Some(e))));
            let lp = p.logprobs.is_some().then(|| shape.logprobs(i, &items));
            json!({
                "index": i,
                "text": shape.echoes[i].clone() + &c.text,
                "logprobs": lp,
                "finish_reason": c.finish,
            })
        })
        .collect();
    Ok(axum::Json(shape.env.whole(choices, usage)).into_response())
}

fn prompts(st: &AppState, b: &Body) -> Result<Vec<Vec<u32>>, ApiError> {
    let bad = |m: &str| ApiError::param("prompt", m);
    let text = |s: &str| {
        st.tokenizer
            .encode_prompt(s, true)
            .map_err(|e| ApiError::param("prompt", format!("cannot tokenize the prompt: {e}")))
    };
    let ids = |a: &[Value]| -> Result<Vec<u32>, ApiError> {
        a.iter()
            .map(|v| {
                v.as_u64()
                    .filter(|&t| t <= u32::MAX as u64)
                    .map(|t| t as u32)
            })
            .collect::<Option<Vec<u32>>>()
            .ok_or_else(|| bad("token ids in `prompt` must be non-negative integers"))
    };
    match b.get("prompt") {
        None => Err(bad("`prompt` is required")),
        Some(Value::String(s)) => Ok(vec![text(s)?]),
        Some(Value::Array(a)) if a.is_empty() => Err(bad("`prompt` must not be empty")),
        Some(Value::Array(a)) => match &a[0] {
            Value::String(_) => a
                .iter()
                .map(|v| match v {
                    Value::String(s) => text(s),
                    _ => Err(bad("a list `prompt` must hold only strings, only token ids, or only lists of token ids")),
                })
                .collect(),
            Value::Number(_) => Ok(vec![ids(a)?]),
            Value::Array(_) => a
                .iter()
                .map(|v| match v {
                    Value::Array(inner) => ids(inner),
                    _ => Err(bad("a list `prompt` must hold only strings, only token ids, or only lists of token ids")),
                })
                .collect(),
            _ => Err(bad("`prompt` must be a string, a list of strings, token ids, or lists of token ids")),
        },
        Some(_) => Err(bad("`prompt` must be a string, a list of strings, token ids, or lists of token ids")),
    }
}

struct CompletionShape {
    env: Envelope,
    /// Per choice: the echoed prompt, and where its next token starts in its text.
    echoes: Vec<String>,
    offsets: Vec<usize>,
    /// The echo waits for the prompt's log-probabilities and is sent with them.
    echo_logprobs: bool,
}

impl CompletionShape {
    /// The legacy logprobs object: tokens, their log-probabilities (null for a prompt's first
    /// token), the top alternatives as a map, and where each token starts in the choice's text.
    fn logprobs(&mut self, choice: usize, items: &[(u32, Option<LogprobEntry>)]) -> Value {
        let mut tokens = Vec::new();
        let mut lps = Vec::new();
        let mut tops = Vec::new();
        let mut offsets = Vec::new();
        for (id, e) in items {
            let (s, _) = self.env.st.token_string(*id);
            offsets.push(self.offsets[choice]);
            self.offsets[choice] += s.len();
            tokens.push(s);
            match e {
                None => {
                    lps.push(Value::Null);
                    tops.push(Value::Null);
                }
                Some(e) => {
                    lps.push(json!(e.logprob));
                    let mut m = Map::new();
                    for &(id, lp) in &e.top {
                        m.insert(self.env.st.token_string(id).0, json!(lp));
                    }
                    tops.push(Value::Object(m));
                }
            }
        }
        json!({"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets})
    }
}

impl Shape for CompletionShape {
    fn envelope(&self) -> &Envelope {
        &self.env
    }

    fn head(&mut self, n: usize) -> Vec<Value> {
        (0..n)
            .filter(|&i| !self.echoes[i].is_empty() && !self.echo_logprobs)
            .map(|i| {
                self.env.chunk(vec![json!({
                    "index": i,
                    "text": self.echoes[i],
                    "logprobs": null,
                    "finish_reason": null,
                })])
            })
            .collect()
    }

    fn delta(&mut self, d: Delta) -> Vec<Value> {
        let mut out = Vec::new();
        if let Some(items) = &d.prompt_logprobs {
            let lp = self.logprobs(d.index, items);
            out.push(self.env.chunk(vec![json!({
                "index": d.index,
                "text": self.echoes[d.index],
                "logprobs": lp,
                "finish_reason": null,
            })]));
        }
        if !d.text.is_empty() || !d.logprobs.is_empty() {
            let items: Vec<_> = d.logprobs.into_iter().map(|e| (e.id, Some(e))).collect();
            let lp = (!items.is_empty()).then(|| self.logprobs(d.index, &items));
            out.push(self.env.chunk(vec![json!({
                "index": d.index,
                "text": d.text,
                "logprobs": lp,
                "finish_reason": null,
            })]));
        }
        if let Some(f) = d.finish {
            out.push(self.env.chunk(vec![json!({
                "index": d.index,
                "text": "",
                "logprobs": null,
                "finish_reason": f,
            })]));
        }
        out
    }
}
