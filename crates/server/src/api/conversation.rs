//! A chat request's conversation: `messages` (with tool calls and tool results), `tools` and
//! `tool_choice`, `chat_template_kwargs`, each checked field by field (a 400 names the field),
//! and what the model's template is given — the tools themselves, or for a template without tool
//! support the generic fallback's system message and tags.

use super::error::ApiError;
use super::params::Body;
use serde_json::{json, Map, Value};
use suanli_constrain::tools::{
    generic_system_prompt, parse_tool_choice, parse_tools, template_supports_tools, Tool,
    ToolChoice, CLOSE, OPEN,
};
use suanli_tokenizer::{ChatMessage, TemplateExtra};

/// Most messages in one conversation (a template's work grows with them).
const MAX_MESSAGES: usize = 4096;
/// Template variables a request may set (`chat_template_kwargs`): reasoning switches only,
/// JSON scalars only — the template is the model's, the values the client's.
const TEMPLATE_KWARGS: [&str; 2] = ["enable_thinking", "thinking"];

pub(super) fn template_kwargs(b: &Body) -> Result<Map<String, Value>, ApiError> {
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
pub(super) struct Tools {
    pub list: Vec<Tool>,
    pub choice: ToolChoice,
    pub parallel: bool,
}

pub(super) fn tools(b: &Body) -> Result<Tools, ApiError> {
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

/// The messages and template variables the model sees. A template that renders tools gets
/// them (unless `tool_choice` is `none`: then the model is not shown them); one that does not
/// gets the generic fallback: the tools described in a system message, earlier calls and results
/// written in the same tags.
pub(super) fn conversation(
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
            let e = messages(&Body::parse(body.as_bytes()).unwrap()).expect_err(body);
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
            let e = template_kwargs(&Body::parse(body.as_bytes()).unwrap()).expect_err(body);
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
