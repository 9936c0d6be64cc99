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
#[derive(Debug)]
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
            // Already so: there is no fallback backend, and JSON has no free whitespace.
            "json_object" | "disable_fallback" | "disable_any_whitespace" if x.is_boolean() => {
                continue
            }
            "disable_additional_properties" if x == &Value::Bool(false) => continue,
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

/// How each field is read into a grammar (`None`: the field asks for none, `text`).
type Reader = fn(&'static str, &Value) -> Result<Option<Grammar>, ApiError>;

const FIELDS: [(&str, Reader); 8] = [
    ("response_format", |_, v| response_format(v)),
    ("structured_outputs", |_, v| structured_outputs(v).map(Some)),
    ("grammar", |f, v| Ok(Some(Grammar::Lark(string_of(f, v)?)))),
    // llama.cpp's server takes a bare schema as `json_schema`.
    ("json_schema", |f, v| json_schema_of(f, v).map(Some)),
    ("guided_json", |f, v| json_schema_of(f, v).map(Some)),
    ("guided_regex", |f, v| {
        Ok(Some(Grammar::Regex(string_of(f, v)?)))
    }),
    ("guided_choice", |f, v| choice_of(f, v).map(Some)),
    ("guided_grammar", |f, v| {
        Ok(Some(Grammar::Lark(string_of(f, v)?)))
    }),
];

/// The request's grammar, if it asks for one.
pub fn asked(b: &Body) -> Result<Option<Asked>, ApiError> {
    let mut found: Vec<Asked> = Vec::new();
    for (field, read) in FIELDS {
        if let Some(grammar) = b.get(field).map(|v| read(field, v)).transpose()?.flatten() {
            found.push(Asked { field, grammar });
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn asked_of(json: &str) -> Result<Option<Asked>, ApiError> {
        asked(&Body::parse(json.as_bytes()).unwrap())
    }

    #[test]
    fn each_field_gives_its_grammar() {
        for (json, field, want) in [
            (
                r#"{"response_format": {"type": "json_object"}}"#,
                "response_format",
                Grammar::JsonObject,
            ),
            (
                r#"{"response_format": {"type": "json_schema", "json_schema": {"name": "x", "strict": true, "schema": {"type": "object"}}}}"#,
                "response_format",
                Grammar::JsonSchema(serde_json::json!({"type": "object"})),
            ),
            (
                r#"{"structured_outputs": {"regex": "a+"}}"#,
                "structured_outputs",
                Grammar::Regex("a+".into()),
            ),
            (
                r#"{"structured_outputs": {"choice": ["a", "b"]}}"#,
                "structured_outputs",
                Grammar::Choice(vec!["a".into(), "b".into()]),
            ),
            (
                r#"{"grammar": "start: \"x\""}"#,
                "grammar",
                Grammar::Lark("start: \"x\"".into()),
            ),
            (
                r#"{"json_schema": {"type": "array"}}"#,
                "json_schema",
                Grammar::JsonSchema(serde_json::json!({"type": "array"})),
            ),
            (
                r#"{"guided_json": "{\"type\": \"object\"}"}"#,
                "guided_json",
                Grammar::JsonSchema(serde_json::json!({"type": "object"})),
            ),
        ] {
            let a = asked_of(json).unwrap().expect(json);
            assert_eq!((a.field, a.grammar), (field, want), "{json}");
        }
        assert!(asked_of(r#"{"response_format": {"type": "text"}}"#)
            .unwrap()
            .is_none());
        assert!(asked_of("{}").unwrap().is_none());
    }

    #[test]
    fn wrong_values_name_their_field() {
        for (json, field, says) in [
            (
                r#"{"response_format": {"type": "yaml"}}"#,
                "response_format",
                "yaml",
            ),
            (
                r#"{"response_format": {"type": "json_schema"}}"#,
                "response_format",
                "json_schema",
            ),
            (
                r#"{"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}"#,
                "response_format",
                "schema",
            ),
            (
                r#"{"response_format": {"type": "json_schema", "json_schema": {"schema": 3}}}"#,
                "response_format",
                "schema",
            ),
            (
                r#"{"response_format": {"type": "json_schema", "json_schema": {"schema": {}, "strict": "yes"}}}"#,
                "response_format",
                "strict",
            ),
            (
                r#"{"response_format": "json"}"#,
                "response_format",
                "object",
            ),
            (
                r#"{"structured_outputs": {"regex": "a", "choice": ["b"]}}"#,
                "structured_outputs",
                "only one",
            ),
            (
                r#"{"structured_outputs": {"yaml": "a"}}"#,
                "structured_outputs",
                "yaml",
            ),
            (
                r#"{"structured_outputs": {"json": {}, "whitespace_pattern": " *"}}"#,
                "structured_outputs",
                "whitespace_pattern",
            ),
            (
                r#"{"structured_outputs": {"json": {}, "disable_additional_properties": true}}"#,
                "structured_outputs",
                "disable_additional_properties",
            ),
            (
                r#"{"structured_outputs": {}}"#,
                "structured_outputs",
                "no constraint",
            ),
            (r#"{"guided_choice": []}"#, "guided_choice", "non-empty"),
            (r#"{"grammar": 3}"#, "grammar", "string"),
            (
                r#"{"grammar": "start: \"x\"", "guided_regex": "y"}"#,
                "guided_regex",
                "only one",
            ),
        ] {
            let e = asked_of(json).expect_err(json);
            assert_eq!(e.status, 400, "{json}");
            assert_eq!(e.param.as_deref(), Some(field), "{json}: {}", e.message);
            assert!(e.message.contains(says), "{json}: {}", e.message);
        }
    }
}
