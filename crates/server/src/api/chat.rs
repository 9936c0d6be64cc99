//! `POST /v1/chat/completions`: the request's conversation (`conversation.rs`) rendered, its
//! constraint compiled (a structured output or the tool choice), the answers split into
//! reasoning, content and tool calls (`answer.rs`), whole or streamed.

use super::answer::{Answer, AnswerSpec};
use super::error::ApiError;
use super::params::{gen_params, Body, MAX_TOP_LOGPROBS};
use super::stream::{collect, sse, Envelope, Shape};
use super::{begin, blocking, read_body, structured};
use crate::generate::{Delta, Generation, LogprobEntry};
use crate::state::{random_hex, AppState};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::sync::Arc;
use suanli_constrain::reasoning;
use suanli_constrain::tools::{check_parameters, constraint_for, Format, ToolCall, ToolChoice};
use suanli_constrain::Compiled;
use suanli_tokenizer::chat_prompt_full;

pub use super::conversation::messages;
use super::conversation::{conversation, template_kwargs, tools};

const TEMPLATE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub async fn handler(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let b = read_body(body)?;
    begin(&st, &b)?;
    own_template_only(&b)?;
    let kwargs = template_kwargs(&b)?;
    let msgs = messages(&b)?;
    let tools = tools(&b)?;
    let asked = structured::asked(&b)?;
    if let (Some(a), ToolChoice::Auto | ToolChoice::Required | ToolChoice::Named(_)) =
        (&asked, &tools.choice)
    {
        return Err(ApiError::param(
            a.field,
            format!(
                "`{}` cannot be combined with tool calls; send `tool_choice: \"none\"` with it",
                a.field
            ),
        ));
    }
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
    let source = st.tokenizer.chat_template.clone().unwrap_or_default();
    let calling = tools.choice != ToolChoice::None;
    let format = Format::detect(&source);
    let (prompt, text) = render_prompt(&st, msgs, &tools, kwargs).await?;
    // A reasoning model thinks first: constraints start after its thinking.
    let thinks = reasoning::template_thinks(&source);
    let thinking_first = thinks && !reasoning::prompt_closes_thinking(&text);
    let after_thinking = |c: Compiled| {
        if thinking_first {
            c.lazy(reasoning::CLOSE)
        } else {
            c
        }
    };
    if let Some(a) = asked {
        p.constraint = Some(after_thinking(structured::compile(&st, a).await?));
    } else if calling {
        let vocab = structured::vocab(&st).await?;
        let (list, choice, parallel) = (tools.list.clone(), tools.choice.clone(), tools.parallel);
        let c = blocking(move || {
            check_parameters(&vocab, &list).map_err(|e| ApiError::param("tools", e))?;
            constraint_for(&vocab, &list, &choice, parallel, format)
                .map_err(|e| ApiError::param("tools", e))
        })
        .await?;
        p.constraint = c.map(|c| match tools.choice {
            ToolChoice::Auto => c,
            _ => after_thinking(c),
        });
    }
    let spec = AnswerSpec {
        reasoning: thinks && st.reasoning_separate,
        inside_thinking: reasoning::prompt_opens_thinking(&text),
        tools: if calling { tools.list } else { Vec::new() },
        format: Some(format),
    };
    let g = Generation::start(&st, vec![prompt], &p, "messages").await?;
    let shape = ChatShape {
        env: Envelope::new(
            st.clone(),
            "chatcmpl",
            "chat.completion",
            "chat.completion.chunk",
            p.include_usage,
        ),
        spec,
        answers: Vec::new(),
    };
    if p.stream {
        return Ok(sse(g, shape));
    }
    let (choices, usage) = collect(g).await?;
    let choices: Vec<Value> = choices
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let mut a = Answer::new(&shape.spec);
            let mut parts = a.push(&c.text);
            let rest = a.finish();
            parts.reasoning += &rest.reasoning;
            parts.content += &rest.content;
            parts.calls.extend(rest.calls);
            let calls: Vec<Value> = parts
                .calls
                .iter()
                .map(|c| tool_call_json(c, &call_id()))
                .collect();
            let mut message = json!({
                "role": "assistant",
                "content": if calls.is_empty() || !parts.content.is_empty() {
                    Value::String(parts.content)
                } else {
                    Value::Null
                },
                "refusal": null,
            });
            if shape.spec.reasoning {
                message["reasoning_content"] = json!(parts.reasoning);
            }
            if !calls.is_empty() {
                message["tool_calls"] = Value::Array(calls);
            }
            json!({
                "index": i,
                "message": message,
                "logprobs": want_logprobs.then(|| shape.logprobs(&c.logprobs)),
                "finish_reason": finish_reason(c.finish, a.n_calls),
            })
        })
        .collect();
    Ok(axum::Json(shape.env.whole(choices, usage)).into_response())
}

/// `stop` becomes `tool_calls` when the answer called tools.
/// A template is code; only the model's own runs here, so a request's `chat_template` is
/// refused by name.
pub(super) fn own_template_only(b: &Body) -> Result<(), ApiError> {
    match b.get("chat_template") {
        Some(_) => Err(ApiError::param(
            "chat_template",
            "`chat_template` from requests is not accepted; the model's chat template is used",
        )),
        None => Ok(()),
    }
}

/// The messages, with the request's tools and template arguments, rendered by the model's chat
/// template (in the sandbox, within `TEMPLATE_TIMEOUT`): the prompt's tokens and text. The chat
/// handler and vLLM's form of `/tokenize` share it, so both give the same tokens.
pub(super) async fn render_prompt(
    st: &Arc<AppState>,
    msgs: Vec<suanli_tokenizer::ChatMessage>,
    tools: &super::conversation::Tools,
    kwargs: serde_json::Map<String, Value>,
) -> Result<(Vec<u32>, String), ApiError> {
    let renderer = st
        .template
        .clone()
        .map_err(|why| ApiError::param("messages", why))?;
    let source = st.tokenizer.chat_template.clone().unwrap_or_default();
    let (msgs, extra) = conversation(msgs, tools, kwargs, &source);
    let tok = st.tokenizer.clone();
    let render = blocking(move || {
        chat_prompt_full(&tok, renderer.as_ref(), &msgs, &extra)
            .map_err(|e| ApiError::param("messages", e))
    });
    // Fuel bounds a template's work; this bounds the wait too.
    tokio::time::timeout(TEMPLATE_TIMEOUT, render)
        .await
        .map_err(|_| {
            ApiError::param(
                "messages",
                format!("the chat template took longer than {TEMPLATE_TIMEOUT:?} to render"),
            )
        })?
}

fn finish_reason(f: &'static str, calls: usize) -> &'static str {
    if f == "stop" && calls > 0 {
        "tool_calls"
    } else {
        f
    }
}

fn call_id() -> String {
    format!("call_{}", random_hex())
}

fn tool_call_json(c: &ToolCall, id: &str) -> Value {
    json!({
        "id": id,
        "type": "function",
        "function": {"name": c.name, "arguments": c.arguments},
    })
}

struct ChatShape {
    env: Envelope,
    spec: AnswerSpec,
    /// Each choice's parser, made by `head`.
    answers: Vec<Answer>,
}

impl ChatShape {
    fn logprobs(&self, entries: &[LogprobEntry]) -> Value {
        let one = |id: u32, lp: f32| {
            let (s, bytes) = self.env.st.token_string(id);
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

    fn chunk(&self, index: usize, delta: Value, logprobs: Value, finish: Option<&str>) -> Value {
        self.env.chunk(vec![json!({
            "index": index,
            "delta": delta,
            "logprobs": logprobs,
            "finish_reason": finish,
        })])
    }
}

impl Shape for ChatShape {
    fn envelope(&self) -> &Envelope {
        &self.env
    }

    fn head(&mut self, n: usize) -> Vec<Value> {
        self.answers = (0..n).map(|_| Answer::new(&self.spec)).collect();
        (0..n)
            .map(|i| {
                self.chunk(
                    i,
                    json!({"role": "assistant", "content": ""}),
                    Value::Null,
                    None,
                )
            })
            .collect()
    }

    fn delta(&mut self, d: Delta) -> Vec<Value> {
        let mut out = Vec::new();
        let Some(a) = self.answers.get_mut(d.index) else {
            return out;
        };
        let mut parts = a.push(&d.text);
        if d.finish.is_some() {
            let rest = a.finish();
            parts.reasoning += &rest.reasoning;
            parts.content += &rest.content;
            parts.calls.extend(rest.calls);
        }
        let n_calls = a.n_calls;
        let mut lp = (!d.logprobs.is_empty()).then(|| self.logprobs(&d.logprobs));
        if !parts.reasoning.is_empty() {
            let delta = json!({"reasoning_content": parts.reasoning});
            out.push(self.chunk(d.index, delta, lp.take().unwrap_or(Value::Null), None));
        }
        if !parts.content.is_empty() || (lp.is_some() && parts.calls.is_empty()) {
            let delta = json!({"content": parts.content});
            out.push(self.chunk(d.index, delta, lp.take().unwrap_or(Value::Null), None));
        }
        for c in &parts.calls {
            // OpenAI's order: the call's index, id and name first, then its arguments.
            let head = json!({"tool_calls": [{
                "index": c.index, "id": call_id(), "type": "function",
                "function": {"name": c.name, "arguments": ""},
            }]});
            out.push(self.chunk(d.index, head, lp.take().unwrap_or(Value::Null), None));
            let args =
                json!({"tool_calls": [{"index": c.index, "function": {"arguments": c.arguments}}]});
            out.push(self.chunk(d.index, args, Value::Null, None));
        }
        if let Some(f) = d.finish {
            let f = finish_reason(f, n_calls);
            out.push(self.chunk(d.index, json!({}), Value::Null, Some(f)));
        }
        out
    }
}
