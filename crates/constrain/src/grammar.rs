//! What an answer must match, as requests state it, and its compilation by llguidance into a
//! matcher for one model's vocabulary.

use crate::matcher::Constraint;
use crate::vocab::Vocab;
use llguidance::api::TopLevelGrammar;
use llguidance::Matcher;
use serde_json::{json, Value};
use std::sync::Arc;

/// Most bytes of a grammar, regular expression or schema's text (llguidance bounds the
/// compiled size too: `ParserLimits`).
pub const MAX_SOURCE: usize = 1 << 20;
/// Most strings of a choice.
pub const MAX_CHOICES: usize = 4096;

#[derive(Clone, Debug, PartialEq)]
pub enum Grammar {
    /// Any JSON object (`response_format: {"type": "json_object"}`).
    JsonObject,
    /// A JSON Schema (draft 2020-12 as llguidance supports it; an unsupported keyword is an
    /// error that names it).
    JsonSchema(Value),
    /// A regular expression the whole answer matches.
    Regex(String),
    /// A Lark grammar in llguidance's dialect (`start: ...`, `%json {...}`, `<|special|>`).
    Lark(String),
    /// Exactly one of these strings.
    Choice(Vec<String>),
}

/// How JSON is written: Python's `json.dumps` separators, no free whitespace — a small model
/// given free whitespace can fill `max_tokens` with newlines and never close the object.
pub(crate) fn json_options() -> Value {
    json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "})
}

/// `schema` with this crate's JSON layout unless it sets its own (`x-guidance`).
pub(crate) fn with_layout(schema: &Value) -> Value {
    let mut s = schema.clone();
    if let Value::Object(m) = &mut s {
        m.entry("x-guidance").or_insert_with(json_options);
    } else if schema == &Value::Bool(true) {
        s = json!({"x-guidance": json_options()});
    }
    s
}

/// `text` as a Lark string literal.
pub(crate) fn lark_str(text: &str) -> String {
    serde_json::to_string(text).expect("strings serialize")
}

impl Grammar {
    fn top_level(&self) -> Result<TopLevelGrammar, String> {
        let too_big = |what: &str, n: usize| {
            (n > MAX_SOURCE).then(|| format!("the {what} is {n} bytes; the limit is {MAX_SOURCE}"))
        };
        Ok(match self {
            Grammar::JsonObject => {
                TopLevelGrammar::from_json_schema(with_layout(&json!({"type": "object"})))
            }
            Grammar::JsonSchema(s) => {
                if let Some(e) = too_big("schema", s.to_string().len()) {
                    return Err(e);
                }
                if !matches!(s, Value::Object(_) | Value::Bool(true)) {
                    return Err("a JSON schema must be an object".into());
                }
                TopLevelGrammar::from_json_schema(with_layout(s))
            }
            Grammar::Regex(r) => {
                if let Some(e) = too_big("regular expression", r.len()) {
                    return Err(e);
                }
                TopLevelGrammar::from_regex(r)
            }
            Grammar::Lark(g) => {
                if let Some(e) = too_big("grammar", g.len()) {
                    return Err(e);
                }
                if g.trim().is_empty() {
                    return Err("the grammar is empty".into());
                }
                TopLevelGrammar::from_lark(g.clone())
            }
            Grammar::Choice(list) => {
                if list.is_empty() || list.len() > MAX_CHOICES {
                    return Err(format!("a choice needs 1 to {MAX_CHOICES} strings"));
                }
                if let Some(e) = too_big("choice", list.iter().map(String::len).sum()) {
                    return Err(e);
                }
                let alts: Vec<String> = list.iter().map(|s| lark_str(s)).collect();
                TopLevelGrammar::from_lark(format!("start: {}", alts.join(" | ")))
            }
        })
    }

    /// Compile for `vocab`. The error says what is wrong with the grammar (a schema's
    /// unsupported keyword is named).
    pub fn compile(&self, vocab: &Arc<Vocab>) -> Result<Compiled, String> {
        Compiled::new(vocab, self.top_level()?, None)
    }
}

/// A compiled grammar: each sequence gets its own matcher from it (`constraint`).
#[derive(Clone)]
pub struct Compiled {
    vocab: Arc<Vocab>,
    matcher: Matcher,
    /// Constrain only after this text appears in the answer (a tool call's opening tag, the
    /// end of a model's reasoning); before it every token is allowed.
    trigger: Option<String>,
}

impl Compiled {
    pub(crate) fn new(
        vocab: &Arc<Vocab>,
        grammar: TopLevelGrammar,
        trigger: Option<String>,
    ) -> Result<Compiled, String> {
        let parser = vocab
            .factory
            .create_parser(grammar)
            .map_err(|e| clean_error(&e.to_string()))?;
        let mut matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(clean_error(&e));
        }
        // Compute the first mask now: some errors (an unsatisfiable schema) surface only then,
        // and the cost belongs to compilation, not to the first step.
        matcher
            .compute_mask()
            .map_err(|e| clean_error(&e.to_string()))?;
        Ok(Compiled {
            vocab: vocab.clone(),
            matcher,
            trigger,
        })
    }

    /// Only constrain once `trigger` has appeared in the answer.
    pub fn lazy(mut self, trigger: &str) -> Compiled {
        self.trigger = Some(trigger.to_owned());
        self
    }

    /// A fresh matcher for one sequence.
    pub fn constraint(&self) -> Constraint {
        Constraint::new(
            self.matcher.clone(),
            self.vocab.eog.clone(),
            self.trigger.clone(),
        )
    }
}

/// llguidance's messages, without its internal prefixes.
fn clean_error(e: &str) -> String {
    let e = e.trim();
    let e = e.strip_prefix("error: ").unwrap_or(e);
    let first: String = e.lines().take(6).collect::<Vec<_>>().join("; ");
    if first.len() > 1000 {
        let cut = (0..=1000)
            .rev()
            .find(|&i| first.is_char_boundary(i))
            .unwrap_or(0);
        format!("{}…", &first[..cut])
    } else {
        first
    }
}
