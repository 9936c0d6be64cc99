//! Tool calling: OpenAI's `tools` and `tool_choice` read and checked, the grammar that forces a
//! call (`required`, a named function) or constrains one once the model opens it (`auto`), and
//! the model's text parsed back into calls.
//!
//! Formats. Templates with tool support in the Hermes style (Qwen2.5, Qwen3, Hermes and many
//! fine-tunes) have the model write `<tool_call>\n{"name": …, "arguments": {…}}\n</tool_call>`.
//! A template without tool support gets the generic fallback: suanli describes the tools in a
//! system message (`generic_system_prompt`) and asks for the same tags, so one grammar and one
//! parser serve both. The parser also recognises what small models write instead of the tags when
//! not forced: a fenced ```json block, or a whole answer that is one JSON object, holding a known
//! tool's `name` and its `arguments` (or `parameters`, as Llama 3.x writes).

mod parse;
pub use parse::{CallParser, Piece, ToolCall};

use crate::grammar::{lark_str, with_layout, Compiled, Grammar};
use crate::vocab::Vocab;
use serde_json::{json, Value};
use std::sync::Arc;

/// Most tools in one request (OpenAI's limit).
pub const MAX_TOOLS: usize = 128;

/// Opening and closing tags of a call.
pub const OPEN: &str = "<tool_call>";
pub const CLOSE: &str = "</tool_call>";

#[derive(Clone, Debug, PartialEq)]
pub struct Tool {
    pub name: String,
    /// The JSON schema of the arguments (an empty object schema when the tool declares none).
    pub parameters: Value,
    /// The tool as the request gave it, for the chat template.
    pub raw: Value,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ToolChoice {
    /// No call: the answer is text (the tools are still shown to the model, as OpenAI does).
    None,
    /// The model decides; a call it opens is constrained to a known tool and its parameters.
    Auto,
    /// At least one call, forced from the first token.
    Required,
    /// A call of this tool, forced from the first token.
    Named(String),
}

/// A function name as OpenAI accepts it: 1 to 64 of `a-z A-Z 0-9 _ -`.
fn valid_name(n: &str) -> bool {
    (1..=64).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// `tools` of a request. The error names the offending entry and field.
pub fn parse_tools(v: &Value) -> Result<Vec<Tool>, String> {
    let Value::Array(list) = v else {
        return Err("`tools` must be a list of tools".into());
    };
    if list.len() > MAX_TOOLS {
        return Err(format!("`tools` may hold at most {MAX_TOOLS} tools"));
    }
    let mut out: Vec<Tool> = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        let at = format!("tools[{i}]");
        let Value::Object(t) = t else {
            return Err(format!("{at} must be an object"));
        };
        match t.get("type").and_then(Value::as_str) {
            Some("function") => {}
            Some(other) => {
                return Err(format!(
                    "{at}.type {other:?} is not supported; only \"function\" tools are"
                ))
            }
            None => return Err(format!("{at}.type is required (\"function\")")),
        }
        let Some(Value::Object(f)) = t.get("function") else {
            return Err(format!("{at}.function must be an object"));
        };
        let name = match f.get("name") {
            Some(Value::String(n)) if valid_name(n) => n.clone(),
            Some(Value::String(n)) => {
                return Err(format!(
                    "{at}.function.name {n:?} must be 1 to 64 letters, digits, '_', '-' or '.'"
                ))
            }
            _ => return Err(format!("{at}.function.name is required")),
        };
        if out.iter().any(|o| o.name == name) {
            return Err(format!("{at}.function.name {name:?} is declared twice"));
        }
        if let Some(d) = f.get("description").filter(|d| !d.is_null()) {
            if !d.is_string() {
                return Err(format!("{at}.function.description must be a string"));
            }
        }
        if let Some(s) = f.get("strict").filter(|d| !d.is_null()) {
            if !s.is_boolean() {
                return Err(format!("{at}.function.strict must be true or false"));
            }
        }
        let parameters = match f.get("parameters") {
            None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
            Some(p @ Value::Object(_)) => p.clone(),
            Some(_) => {
                return Err(format!(
                    "{at}.function.parameters must be a JSON schema object"
                ))
            }
        };
        out.push(Tool {
            name,
            parameters,
            raw: Value::Object(t.clone()),
        });
    }
    Ok(out)
}

/// `tool_choice` (absent: `auto` with tools, `none` without).
pub fn parse_tool_choice(v: Option<&Value>, tools: &[Tool]) -> Result<ToolChoice, String> {
    let choice = match v {
        None | Some(Value::Null) => {
            return Ok(if tools.is_empty() {
                ToolChoice::None
            } else {
                ToolChoice::Auto
            })
        }
        Some(Value::String(s)) => match s.as_str() {
            "none" => ToolChoice::None,
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            other => {
                return Err(format!(
                    "`tool_choice` {other:?} is not one of \"none\", \"auto\", \"required\" or {{\"type\": \"function\", \"function\": {{\"name\": …}}}}"
                ))
            }
        },
        Some(Value::Object(o)) => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .filter(|_| o.get("type").and_then(Value::as_str) == Some("function"))
                .ok_or("`tool_choice` must be {\"type\": \"function\", \"function\": {\"name\": …}}")?;
            ToolChoice::Named(name.to_owned())
        }
        Some(_) => return Err("`tool_choice` must be a string or an object".into()),
    };
    match &choice {
        ToolChoice::Required | ToolChoice::Auto if tools.is_empty() => Err(format!(
            "`tool_choice` {:?} needs `tools`",
            if choice == ToolChoice::Auto {
                "auto"
            } else {
                "required"
            }
        )),
        ToolChoice::Named(n) if !tools.iter().any(|t| &t.name == n) => Err(format!(
            "`tool_choice` names the function {n:?}, which is not in `tools`"
        )),
        _ => Ok(choice),
    }
}

/// Whether a chat template renders `tools` itself; if not, the generic fallback is used.
pub fn template_supports_tools(source: &str) -> bool {
    source.contains("tools")
}

/// How a model family writes a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `<tool_call>\n{"name": …, "arguments": {…}}\n</tool_call>`: Qwen2.5, Qwen3, Hermes and
    /// their fine-tunes, and the generic fallback.
    Hermes,
    /// Llama 3.x: the answer is `{"name": …, "parameters": {…}}` (parallel calls joined by `; `).
    Llama3Json,
    /// GLM-4: the answer is the function's name, a newline, and its arguments' JSON.
    Glm4,
}

impl Format {
    /// The format a chat template asks for (the generic fallback writes Hermes tags).
    pub fn detect(source: &str) -> Format {
        if source.contains(OPEN) || !template_supports_tools(source) {
            Format::Hermes
        } else if source.contains("<|python_tag|>") || source.contains("<|eom_id|>") {
            Format::Llama3Json
        } else if source.contains("<|observation|>") {
            Format::Glm4
        } else {
            Format::Hermes
        }
    }
}

/// The system message of the generic fallback: the tools and how to call them.
pub fn generic_system_prompt(tools: &[Tool]) -> String {
    let mut s = String::from(
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
         You are provided with function signatures within <tools></tools> XML tags:\n<tools>",
    );
    for t in tools {
        s.push('\n');
        s.push_str(&t.raw.to_string());
    }
    s.push_str(
        "\n</tools>\n\nFor each function call, return a json object with function name and \
         arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": \
         <function-name>, \"arguments\": <args-json-object>}\n</tool_call>",
    );
    s
}

/// The schema of one call's JSON: `{"name": <one of tools>, <args>: <its parameters>}`.
fn call_schema(tools: &[&Tool], args: &str) -> Value {
    let one = |t: &Tool| {
        json!({
            "type": "object",
            "properties": {"name": {"const": t.name}, args: t.parameters},
            "required": ["name", args],
            "additionalProperties": false,
        })
    };
    let schema = if tools.len() == 1 {
        one(tools[0])
    } else {
        json!({"anyOf": tools.iter().map(|t| one(t)).collect::<Vec<_>>()})
    };
    with_layout(&schema)
}

/// Check each tool's parameters compile, so that an error names the tool.
pub fn check_parameters(vocab: &Arc<Vocab>, tools: &[Tool]) -> Result<(), String> {
    for (i, t) in tools.iter().enumerate() {
        Grammar::JsonSchema(t.parameters.clone())
            .compile(vocab)
            .map_err(|e| format!("tools[{i}].function.parameters: {e}"))?;
    }
    Ok(())
}

/// The constraint a tool choice puts on the answer: `required` forces calls from the first token
/// (several when `parallel`), a named choice one call of that function; `auto` constrains a call
/// once the model writes the opening tag (Hermes; the other formats have no tag to wait for, and
/// their calls are parsed, not constrained); `none` adds nothing.
pub fn constraint_for(
    vocab: &Arc<Vocab>,
    tools: &[Tool],
    choice: &ToolChoice,
    parallel: bool,
    format: Format,
) -> Result<Option<Compiled>, String> {
    let chosen: Vec<&Tool> = match choice {
        ToolChoice::None => return Ok(None),
        ToolChoice::Named(n) => tools.iter().filter(|t| &t.name == n).collect(),
        ToolChoice::Auto | ToolChoice::Required => tools.iter().collect(),
    };
    // A named choice is one call of that function (as OpenAI and vLLM answer it).
    let parallel = parallel && !matches!(choice, ToolChoice::Named(_));
    let grammar = |call: String, sep: &str| {
        let more = if parallel {
            format!("({} call)*", lark_str(sep))
        } else {
            String::new()
        };
        format!("start: call {more}\ncall: {call}\n")
    };
    match (format, choice) {
        (Format::Hermes, _) => {}
        (_, ToolChoice::Auto) => return Ok(None),
        (Format::Llama3Json, _) => {
            let call = format!("%json {}", call_schema(&chosen, "parameters"));
            let lark = grammar(call, "; ");
            return Compiled::new(
                vocab,
                llguidance::api::TopLevelGrammar::from_lark(lark),
                None,
            )
            .map(Some);
        }
        (Format::Glm4, _) => {
            let alts: Vec<String> = chosen
                .iter()
                .map(|t| {
                    format!(
                        "{} %json {}",
                        lark_str(&format!("{}\n", t.name)),
                        with_layout(&t.parameters)
                    )
                })
                .collect();
            let lark = grammar(format!("({})", alts.join(" | ")), "\n");
            return Compiled::new(
                vocab,
                llguidance::api::TopLevelGrammar::from_lark(lark),
                None,
            )
            .map(Some);
        }
    }
    let schema = call_schema(&chosen, "arguments");
    let call = format!(
        "{} %json {} {}",
        lark_str(&format!("{OPEN}\n")),
        schema,
        lark_str(&format!("\n{CLOSE}"))
    );
    let more = if parallel { "(\"\\n\" call)*" } else { "" };
    let lark = match choice {
        // After the opening tag the model has written: the rest of this call, then more calls.
        ToolChoice::Auto => format!(
            "start: \"\\n\" %json {schema} {} {}\ncall: {call}\n",
            lark_str(&format!("\n{CLOSE}")),
            more
        ),
        _ => format!("start: call {more}\ncall: {call}\n"),
    };
    let compiled = Compiled::new(
        vocab,
        llguidance::api::TopLevelGrammar::from_lark(lark),
        None,
    )?;
    Ok(Some(match choice {
        ToolChoice::Auto => compiled.lazy(OPEN),
        _ => compiled,
    }))
}
