//! `POST /v1/chat/completions`.

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
use serde_json::{json, Map, Value};
use std::sync::Arc;
use suanli_constrain::reasoning;
use suanli_constrain::tools::{
    check_parameters, constraint_for, generic_system_prompt, parse_tool_choice, parse_tools,
    template_supports_tools, Format, Tool, ToolCall, ToolChoice, CLOSE, OPEN,
};
use suanli_constrain::Compiled;
use suanli_tokenizer::{chat_prompt_full, ChatMessage, TemplateExtra};

/// Most messages in one conversation (a template's work grows with them).
const MAX_MESSAGES: usize = 4096;

const TEMPLATE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Template variables a request may set (`chat_template_kwargs`): reasoning switches only,
/// JSON scalars only — the template is the model's, the values the client's.
const TEMPLATE_KWARGS: [&str; 2] = ["enable_thinking", "thinking"];

fn template_kwargs(b: &Body) -> Result<Map<String, Value>, ApiError> {
    const F: &str = "chat_template_kwargs";
    let Some(v) = b.get(F) else {
        return Ok(Map::new());
    };
    let Value::Object(m) = v else {
        return Err(ApiError::param(
            F,
            "`chat_template_kwargs` must be an object",
        ));
    };
    for (k, x) in m {
        if !TEMPLATE_KWARGS.contains(&k.as_str()) {
            return Err(ApiError::param(
                F,
                format!(
                    "`chat_template_kwargs.{k}` is not accepted; allowed: {}",
                    TEMPLATE_KWARGS.join(", ")
                ),
            ));
        }
        if matches!(x, Value::Array(_) | Value::Object(_)) {
            return Err(ApiError::param(
                F,
                format!("`chat_template_kwargs.{k}` must be a string, number, boolean or null"),
            ));
        }
    }
    Ok(m.clone())
}

/// The request's tools, or none.
struct Tools {
    list: Vec<Tool>,
    choice: ToolChoice,
    parallel: bool,
}

fn tools(b: &Body) -> Result<Tools, ApiError> {
    let list = match b.get("tools") {
        Some(v) => parse_tools(v).map_err(|e| ApiError::param("tools", e))?,
        None => Vec::new(),
    };
    let choice = parse_tool_choice(b.get("tool_choice"), &list)
        .map_err(|e| ApiError::param("tool_choice", e))?;
    let parallel = b.bool("parallel_tool_calls")?.unwrap_or(true);
    Ok(Tools {
        list,
        choice,
        parallel,
    })
}

pub async fn handler(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let b = read_body(body)?;
    begin(&st, &b)?;
    if b.get("chat_template").is_some() {
        // A template is code; only the model's own runs here.
        return Err(ApiError::param(
            "chat_template",
            "`chat_template` from requests is not accepted; the model's chat template is used",
        ));
    }
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
    let renderer = st
        .template
        .clone()
        .map_err(|why| ApiError::param("messages", why))?;
    let source = st.tokenizer.chat_template.clone().unwrap_or_default();
    let calling = tools.choice != ToolChoice::None;
    let format = Format::detect(&source);
    let (msgs, extra) = conversation(msgs, &tools, kwargs, &source);
    let tok = st.tokenizer.clone();
    let render = blocking(move || {
        chat_prompt_full(&tok, renderer.as_ref(), &msgs, &extra)
            .map_err(|e| ApiError::param("messages", e))
    });
    // Fuel bounds a template's work; this bounds the wait too.
    let (prompt, text) = tokio::time::timeout(TEMPLATE_TIMEOUT, render)
        .await
        .map_err(|_| {
            ApiError::param(
                "messages",
                format!("the chat template took longer than {TEMPLATE_TIMEOUT:?} to render"),
            )
        })??;
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

/// The messages and template variables the model sees. A template that renders tools gets
/// them (unless `tool_choice` is `none`: then the model is not shown them); one that does not
/// gets the generic fallback: the tools described in a system message, earlier calls and results
/// written in the same tags.
fn conversation(
    mut msgs: Vec<ChatMessage>,
    tools: &Tools,
    kwargs: Map<String, Value>,
    source: &str,
) -> (Vec<ChatMessage>, TemplateExtra) {
    let shown = tools.choice != ToolChoice::None && !tools.list.is_empty();
    if template_supports_tools(source) {
        let list = shown.then(|| Value::Array(tools.list.iter().map(|t| t.raw.clone()).collect()));
        return (
            msgs,
            TemplateExtra {
                tools: list,
                kwargs,
            },
        );
    }
    for m in &mut msgs {
        if let Some(Value::Array(calls)) = m.tool_calls.take() {
            for c in calls {
                let f = c.get("function").cloned().unwrap_or(Value::Null);
                let call = json!({"name": f.get("name"), "arguments": f.get("arguments")});
                if !m.content.is_empty() {
                    m.content.push('\n');
                }
                m.content += &format!("{OPEN}\n{call}\n{CLOSE}");
            }
        }
        if m.role == "tool" {
            m.role = "user".into();
            m.content = format!("<tool_response>\n{}\n</tool_response>", m.content);
            m.tool_call_id = None;
            m.name = None;
        }
    }
    if shown {
        let prompt = generic_system_prompt(&tools.list);
        match msgs.first_mut() {
            Some(m) if m.role == "system" => m.content = format!("{}\n\n{prompt}", m.content),
            _ => msgs.insert(0, ChatMessage::new("system", &prompt)),
        }
    }
    (
        msgs,
        TemplateExtra {
            tools: None,
            kwargs,
        },
    )
}

/// `messages`: roles system/developer/user/assistant/tool; content a string, a list of text
/// parts, or null (an assistant turn that only called tools). Assistant turns may carry
/// `tool_calls`; tool results `tool_call_id` (and `name`).
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
        let mut msg = ChatMessage::new(role, &content);
        match m.get("tool_calls").filter(|v| !v.is_null()) {
            Some(calls) if role == "assistant" => msg.tool_calls = Some(tool_calls(i, calls)?),
            Some(_) => {
                return Err(bad(format!(
                    "messages[{i}].tool_calls: only assistant messages carry tool calls"
                )))
            }
            None => {}
        }
        for (field, slot) in [
            ("tool_call_id", &mut msg.tool_call_id),
            ("name", &mut msg.name),
        ] {
            match m.get(field).filter(|v| !v.is_null()) {
                Some(Value::String(s)) => *slot = Some(s.clone()),
                Some(_) => return Err(bad(format!("messages[{i}].{field} must be a string"))),
                None => {}
            }
        }
        if role == "tool" && msg.tool_call_id.is_none() {
            return Err(bad(format!(
                "messages[{i}].tool_call_id is required in a tool message"
            )));
        }
        out.push(msg);
    }
    Ok(out)
}

/// An assistant turn's `tool_calls`, checked, with each JSON arguments string given to the
/// template as the object it holds (templates write `arguments | tojson`, as vLLM passes them).
fn tool_calls(i: usize, v: &Value) -> Result<Value, ApiError> {
    let bad = |m: String| ApiError::param("messages", m);
    let Value::Array(list) = v else {
        return Err(bad(format!("messages[{i}].tool_calls must be a list")));
    };
    let mut out = Vec::with_capacity(list.len());
    for (j, c) in list.iter().enumerate() {
        let at = format!("messages[{i}].tool_calls[{j}]");
        let f = c
            .get("function")
            .filter(|f| f.is_object())
            .ok_or_else(|| bad(format!("{at}.function must be an object")))?;
        let name = f
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("{at}.function.name is required")))?;
        let arguments = match f.get("arguments") {
            None | Some(Value::Null) => json!({}),
            Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
                Ok(v @ Value::Object(_)) => v,
                _ => {
                    return Err(bad(format!(
                        "{at}.function.arguments must be the JSON text of an object"
                    )))
                }
            },
            Some(v @ Value::Object(_)) => v.clone(),
            Some(_) => {
                return Err(bad(format!(
                    "{at}.function.arguments must be the JSON text of an object"
                )))
            }
        };
        let mut call = json!({
            "type": "function",
            "function": {"name": name, "arguments": arguments},
        });
        if let Some(id) = c.get("id").and_then(Value::as_str) {
            call["id"] = json!(id);
        }
        out.push(call);
    }
    Ok(Value::Array(out))
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

#[cfg(test)]
mod tests {
    use super::*;
    use suanli_tokenizer::ChatTemplate;

    /// Requests with tools, tool calls and tool results render through the server's path
    /// exactly as transformers' `apply_chat_template` renders them (scripts/gen_tool_prompts.py).
    #[test]
    fn tool_prompts_match_transformers() {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/templates"
        );
        let source = std::fs::read_to_string(format!("{dir}/qwen2.5.jinja")).unwrap();
        let refs: Value = serde_json::from_str(
            &std::fs::read_to_string(format!("{dir}/tool_prompts.json")).unwrap(),
        )
        .unwrap();
        let t = ChatTemplate::new(&source, "", "").unwrap();
        let cases = refs["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 3);
        for case in cases {
            let b = Body::parse(case["request"].to_string().as_bytes()).unwrap();
            let tools = tools(&b).unwrap();
            let (msgs, extra) = conversation(messages(&b).unwrap(), &tools, Map::new(), &source);
            let got = t.render_with(&msgs, true, &extra).unwrap();
            assert_eq!(got, case["rendered"].as_str().unwrap());
        }
    }

    #[test]
    fn tool_messages_are_checked() {
        for (body, want) in [
            (
                r#"{"messages": [{"role": "tool", "content": "x"}]}"#,
                "tool_call_id",
            ),
            (
                r#"{"messages": [{"role": "user", "content": "x", "tool_calls": []}]}"#,
                "only assistant",
            ),
            (
                r#"{"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]}]}"#,
                "arguments",
            ),
            (
                r#"{"messages": [{"role": "assistant", "tool_calls": [{}]}]}"#,
                "function",
            ),
        ] {
            let e = messages(&Body::parse(body.as_bytes()).unwrap())
                .err()
                .expect(body);
            assert!(e.message.contains(want), "{body}: {}", e.message);
        }
        for (body, want) in [
            (r#"{"chat_template_kwargs": {"evil": 1}}"#, "evil"),
            (
                r#"{"chat_template_kwargs": {"enable_thinking": [1]}}"#,
                "enable_thinking",
            ),
            (r#"{"chat_template_kwargs": 3}"#, "object"),
        ] {
            let e = template_kwargs(&Body::parse(body.as_bytes()).unwrap())
                .err()
                .expect(body);
            assert!(e.message.contains(want), "{body}: {}", e.message);
            assert_eq!(e.param.as_deref(), Some("chat_template_kwargs"));
        }
    }

    /// A template without tool support: the tools go into a system message and earlier calls
    /// and results into the generic tags.
    #[test]
    fn templates_without_tools_get_the_generic_fallback() {
        let b = Body::parse(
            br#"{"tools": [{"type": "function", "function": {"name": "now"}}],
                 "messages": [{"role": "user", "content": "time?"},
                   {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "now", "arguments": "{}"}}]},
                   {"role": "tool", "tool_call_id": "c", "content": "noon"}]}"#,
        )
        .unwrap();
        let t = tools(&b).unwrap();
        let plain = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}";
        let (msgs, extra) = conversation(messages(&b).unwrap(), &t, Map::new(), plain);
        assert!(extra.tools.is_none());
        let out = ChatTemplate::new(plain, "", "")
            .unwrap()
            .render_with(&msgs, true, &extra)
            .unwrap();
        assert!(out.starts_with("[system] # Tools"), "{out}");
        assert!(
            out.contains("\"name\": \"now\"") || out.contains("\"name\":\"now\""),
            "{out}"
        );
        assert!(
            out.contains(
                "[assistant] <tool_call>\n{\"name\":\"now\",\"arguments\":{}}\n</tool_call>"
            ),
            "{out}"
        );
        assert!(
            out.contains("[user] <tool_response>\nnoon\n</tool_response>"),
            "{out}"
        );
    }
}
