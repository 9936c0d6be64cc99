//! `POST /v1/chat/completions`.

use super::error::ApiError;
use super::params::{gen_params, Body, MAX_TOP_LOGPROBS};
use super::stream::{collect, sse, Envelope, Shape};
use super::{begin, blocking, read_body};
use crate::generate::{Delta, Generation, LogprobEntry};
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::sync::Arc;
use suanli_tokenizer::{chat_prompt_with, ChatMessage};

/// Most messages in one conversation (a template's work grows with them).
const MAX_MESSAGES: usize = 4096;

const TEMPLATE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub async fn handler(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let b = read_body(body)?;
    begin(&st, &b)?;
    for field in ["chat_template", "chat_template_kwargs"] {
        if b.get(field).is_some() {
            // A template is code; only the model's own runs here.
            return Err(ApiError::param(
                field,
                format!(
                    "`{field}` from requests is not accepted; the model's chat template is used"
                ),
            ));
        }
    }
    let msgs = messages(&b)?;
    let mut p = gen_params(&b, st.vocab, st.max_ctx)?;
    let want_logprobs = b.bool("logprobs")?.unwrap_or(false);
    let top = b.int_in("top_logprobs", 0, MAX_TOP_LOGPROBS as i64)?;
    if top.is_some() && !want_logprobs {
        return Err(ApiError::param(
            "top_logprobs",
            "`top_logprobs` needs `logprobs` set to true",
        ));
    }
    if want_logprobs {
        p.logprobs = Some(top.unwrap_or(0) as usize);
    }
    let renderer = st
        .template
        .clone()
        .map_err(|why| ApiError::param("messages", why))?;
    let tok = st.tokenizer.clone();
    let render = blocking(move || {
        chat_prompt_with(&tok, renderer.as_ref(), &msgs).map_err(|e| ApiError::param("messages", e))
    });
    // Fuel bounds a template's work; this bounds the wait too.
    let prompt = tokio::time::timeout(TEMPLATE_TIMEOUT, render)
        .await
        .map_err(|_| {
            ApiError::param(
                "messages",
                format!("the chat template took longer than {TEMPLATE_TIMEOUT:?} to render"),
            )
        })??;
    let g = Generation::start(&st, vec![prompt], &p, "messages").await?;
    let shape = ChatShape(Envelope::new(
        st.clone(),
        "chatcmpl",
        "chat.completion",
        "chat.completion.chunk",
        p.include_usage,
    ));
    if p.stream {
        return Ok(sse(g, shape));
    }
    let (choices, usage) = collect(g).await?;
    let choices: Vec<Value> = choices
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            json!({
                "index": i,
                "message": {"role": "assistant", "content": c.text, "refusal": null},
                "logprobs": want_logprobs.then(|| shape.logprobs(&c.logprobs)),
                "finish_reason": c.finish,
            })
        })
        .collect();
    Ok(axum::Json(shape.0.whole(choices, usage)).into_response())
}

/// `messages`: roles system/developer/user/assistant/tool; content a string, a list of text
/// parts, or null (an assistant turn that only called tools).
pub fn messages(b: &Body) -> Result<Vec<ChatMessage>, ApiError> {
    let bad = |m: String| ApiError::param("messages", m);
    let list = match b.get("messages") {
        Some(Value::Array(a)) if a.len() > MAX_MESSAGES => {
            return Err(bad(format!(
                "`messages` may hold at most {MAX_MESSAGES} messages"
            )))
        }
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(Value::Array(_)) => return Err(bad("`messages` must not be empty".into())),
        Some(_) => return Err(bad("`messages` must be a list of messages".into())),
        None => return Err(bad("`messages` is required".into())),
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let Value::Object(m) = m else {
            return Err(bad(format!("messages[{i}] must be an object")));
        };
        let role = match m.get("role").and_then(Value::as_str) {
            Some(r @ ("system" | "user" | "assistant" | "tool")) => r,
            Some("developer") => "system",
            Some(r) => {
                return Err(bad(format!(
                "messages[{i}].role {r:?} is not one of system, developer, user, assistant, tool"
            )))
            }
            None => return Err(bad(format!("messages[{i}].role is required"))),
        };
        let content = match m.get("content") {
            Some(Value::String(s)) => s.clone(),
            None | Some(Value::Null) if role == "assistant" => String::new(),
            Some(Value::Array(parts)) => {
                let mut text = String::new();
                for (j, part) in parts.iter().enumerate() {
                    match (
                        part.get("type").and_then(Value::as_str),
                        part.get("text").and_then(Value::as_str),
                    ) {
                        (Some("text"), Some(t)) => text.push_str(t),
                        (Some(t), _) if t != "text" => {
                            return Err(bad(format!(
                                "messages[{i}].content[{j}]: content parts of type {t:?} are not supported by this text model"
                            )))
                        }
                        _ => {
                            return Err(bad(format!(
                                "messages[{i}].content[{j}] must be {{\"type\": \"text\", \"text\": …}}"
                            )))
                        }
                    }
                }
                text
            }
            _ => {
                return Err(bad(format!(
                    "messages[{i}].content must be a string or a list of text parts"
                )))
            }
        };
        out.push(ChatMessage::new(role, &content));
    }
    Ok(out)
}

struct ChatShape(Envelope);

impl ChatShape {
    fn logprobs(&self, entries: &[LogprobEntry]) -> Value {
        let one = |id: u32, lp: f32| {
            let (s, bytes) = self.0.st.token_string(id);
            json!({"token": s, "logprob": lp, "bytes": bytes})
        };
        let content: Vec<Value> = entries
            .iter()
            .map(|e| {
                let mut v = one(e.id, e.logprob);
                v["top_logprobs"] = e.top.iter().map(|&(id, lp)| one(id, lp)).collect();
                v
            })
            .collect();
        json!({"content": content, "refusal": null})
    }
}

impl Shape for ChatShape {
    fn envelope(&self) -> &Envelope {
        &self.0
    }

    fn head(&self, n: usize) -> Vec<Value> {
        (0..n)
            .map(|i| {
                self.0.chunk(vec![json!({
                    "index": i,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": null,
                    "finish_reason": null,
                })])
            })
            .collect()
    }

    fn delta(&mut self, d: Delta) -> Vec<Value> {
        let mut out = Vec::new();
        if !d.text.is_empty() || !d.logprobs.is_empty() {
            let lp = (!d.logprobs.is_empty()).then(|| self.logprobs(&d.logprobs));
            out.push(self.0.chunk(vec![json!({
                "index": d.index,
                "delta": {"content": d.text},
                "logprobs": lp,
                "finish_reason": null,
            })]));
        }
        if let Some(f) = d.finish {
            out.push(self.0.chunk(vec![json!({
                "index": d.index,
                "delta": {},
                "logprobs": null,
                "finish_reason": f,
            })]));
        }
        out
    }
}
