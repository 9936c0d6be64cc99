//! Structured output fields: OpenAI's `response_format`, llama.cpp's `grammar` and
//! `json_schema`, vLLM's `structured_outputs` (and its older `guided_*` names). At most one may
//! be given; each wrong value is a 400 naming its field. Compilation (llguidance, for this
//! model's vocabulary) runs off the async workers; its errors name the field too.

use super::blocking;
use super::error::ApiError;
use super::params::Body;
use crate::state::AppState;
use serde_json::Value;
use std::sync::Arc;
use suanli_constrain::{Compiled, Grammar, Vocab};

/// Where a request's grammar came from (for errors).
pub struct Asked {
    pub field: &'static str,
    pub grammar: Grammar,
}

fn json_schema_of(field: &'static str, v: &Value) -> Result<Grammar, ApiError> {
    match v {
        Value::Object(_) | Value::Bool(true) => Ok(Grammar::JsonSchema(v.clone())),
        Value::String(s) => match serde_json::from_str::<Value>(s) {
            Ok(v @ Value::Object(_)) => Ok(Grammar::JsonSchema(v)),
            _ => Err(ApiError::param(
                field,
                format!("`{field}` must be a JSON schema object"),
            )),
        },
        _ => Err(ApiError::param(
            field,
            format!("`{field}` must be a JSON schema object"),
        )),
    }
}

fn string_of(field: &'static str, v: &Value) -> Result<String, ApiError> {
    v.as_str()
        .map(str::to_owned)
        .ok_or_else(|| ApiError::param(field, format!("`{field}` must be a string")))
}

fn choice_of(field: &'static str, v: &Value) -> Result<Grammar, ApiError> {
    let bad = || {
        ApiError::param(
            field,
            format!("`{field}` must be a non-empty list of strings"),
        )
    };
    let list = v.as_array().filter(|a| !a.is_empty()).ok_or_else(bad)?;
    let list: Vec<String> = list
        .iter()
        .map(|x| x.as_str().map(str::to_owned))
        .collect::<Option<_>>()
        .ok_or_else(bad)?;
    Ok(Grammar::Choice(list))
}

/// `response_format`: `text`, `json_object`, or `json_schema` with `json_schema.schema`
/// (`strict` accepted: answers always fit the schema).
fn response_format(v: &Value) -> Result<Option<Grammar>, ApiError> {
    const F: &str = "response_format";
    let Value::Object(o) = v else {
        return Err(ApiError::param(F, "`response_format` must be an object"));
    };
    match o.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(Grammar::JsonObject)),
        Some("json_schema") => {
            let Some(Value::Object(js)) = o.get("json_schema") else {
                return Err(ApiError::param(
                    F,
                    "`response_format.json_schema` must be an object with a `schema`",
                ));
            };
            if let Some(s) = js.get("strict").filter(|s| !s.is_null() && !s.is_boolean()) {
                return Err(ApiError::param(
                    F,
                    format!("`response_format.json_schema.strict` must be true or false, got {s}"),
                ));
            }
            match js.get("schema") {
                Some(s) => json_schema_of(F, s).map(Some),
                None => Err(ApiError::param(
                    F,
                    "`response_format.json_schema.schema` is required",
                )),
            }
        }
        Some(other) => Err(ApiError::param(
            F,
            format!("`response_format.type` {other:?} is not one of \"text\", \"json_object\", \"json_schema\""),
        )),
        None => Err(ApiError::param(F, "`response_format.type` is required")),
    }
}

/// vLLM's `structured_outputs`: exactly one of `json`, `regex`, `choice`, `grammar`, `json_object`.
fn structured_outputs(v: &Value) -> Result<Grammar, ApiError> {
    const F: &str = "structured_outputs";
    let Value::Object(o) = v else {
        return Err(ApiError::param(F, "`structured_outputs` must be an object"));
    };
    let mut found = Vec::new();
    for (k, x) in o.iter().filter(|(_, x)| !x.is_null()) {
        let g = match k.as_str() {
            "json" => json_schema_of(F, x)?,
            "regex" => Grammar::Regex(string_of(F, x)?),
            "choice" => choice_of(F, x)?,
            "grammar" => Grammar::Lark(string_of(F, x)?),
            "json_object" if x == &Value::Bool(true) => Grammar::JsonObject,
            "json_object" | "disable_fallback" | "disable_any_whitespace"
            | "disable_additional_properties" | "whitespace_pattern" => continue,
            other => {
                return Err(ApiError::param(
                    F,
                    format!("`structured_outputs.{other}` is not supported (json, regex, choice, grammar, json_object are)"),
                ))
            }
        };
        found.push(g);
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(ApiError::param(
            F,
            "`structured_outputs` names no constraint (json, regex, choice, grammar)",
        )),
        _ => Err(ApiError::param(
            F,
            "`structured_outputs` may name only one of json, regex, choice, grammar",
        )),
    }
}

/// The request's grammar, if it asks for one.
pub fn asked(b: &Body) -> Result<Option<Asked>, ApiError> {
    let mut found: Vec<Asked> = Vec::new();
    let mut add = |field: &'static str, g: Option<Grammar>| {
        if let Some(grammar) = g {
            found.push(Asked { field, grammar });
        }
    };
    if let Some(v) = b.get("response_format") {
        add("response_format", response_format(v)?);
    }
    if let Some(v) = b.get("structured_outputs") {
        add("structured_outputs", Some(structured_outputs(v)?));
    }
    if let Some(v) = b.get("grammar") {
        add("grammar", Some(Grammar::Lark(string_of("grammar", v)?)));
    }
    // llama.cpp's server takes a bare schema as `json_schema`.
    if let Some(v) = b.get("json_schema") {
        add("json_schema", Some(json_schema_of("json_schema", v)?));
    }
    if let Some(v) = b.get("guided_json") {
        add("guided_json", Some(json_schema_of("guided_json", v)?));
    }
    if let Some(v) = b.get("guided_regex") {
        add(
            "guided_regex",
            Some(Grammar::Regex(string_of("guided_regex", v)?)),
        );
    }
    if let Some(v) = b.get("guided_choice") {
        add("guided_choice", Some(choice_of("guided_choice", v)?));
    }
    if let Some(v) = b.get("guided_grammar") {
        add(
            "guided_grammar",
            Some(Grammar::Lark(string_of("guided_grammar", v)?)),
        );
    }
    if found.len() > 1 {
        let names: Vec<&str> = found.iter().map(|a| a.field).collect();
        return Err(ApiError::param(
            found[1].field,
            format!(
                "only one structured output constraint may be given; got {}",
                names.join(", ")
            ),
        ));
    }
    Ok(found.pop())
}

/// This model's grammar vocabulary (built on first use: a trie of its tokens).
pub async fn vocab(st: &Arc<AppState>) -> Result<Arc<Vocab>, ApiError> {
    let st2 = st.clone();
    blocking(move || {
        st2.grammar_vocab()
            .map_err(|e| ApiError::internal(format!("constrained decoding is unavailable: {e}")))
    })
    .await
}

/// Compile `a` for this model; a bad grammar is a 400 naming its field.
pub async fn compile(st: &Arc<AppState>, a: Asked) -> Result<Compiled, ApiError> {
    let vocab = vocab(st).await?;
    blocking(move || {
        a.grammar
            .compile(&vocab)
            .map_err(|e| ApiError::param(a.field, format!("`{}`: {e}", a.field)))
    })
    .await
}
