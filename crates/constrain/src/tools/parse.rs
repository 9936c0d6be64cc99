//! The model's text back into calls: `CallParser` reads an answer as it streams and gives text and
//! calls in order — Hermes tags, fenced ```json blocks, bare JSON objects, GLM-4's `name\n{…}`.

use super::{Format, Tool, CLOSE, OPEN};
use serde_json::Value;

/// A parsed call. `arguments` is the JSON text of the arguments object as the model wrote it.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolCall {
    pub index: usize,
    pub name: String,
    pub arguments: String,
}

/// What the parser gives back, in the answer's order.
#[derive(Clone, Debug, PartialEq)]
pub enum Piece {
    Text(String),
    Call(ToolCall),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum State {
    /// Nothing but whitespace yet: an answer that opens with `{` may be one bare call.
    Start,
    Text,
    /// Inside a `<tool_call>` block.
    Tagged,
    /// Inside a fenced code block opened by the marker of this length.
    Fenced(usize),
    /// The answer opened with `{`: held whole until the end.
    Bare,
}

const FENCES: [&str; 2] = ["```json\n", "```JSON\n"];

/// Text of an answer, streamed in, split into text and tool calls. Whitespace around calls
/// and at the ends is dropped; a block that does not parse as a call of a known tool stays text.
/// Streaming and collecting run the same code, so the calls a stream reassembles to are the
/// calls of the whole answer.
pub struct CallParser {
    names: Vec<String>,
    format: Format,
    state: State,
    buf: String,
    /// Whitespace held until text follows it.
    ws: String,
    calls: usize,
}

impl CallParser {
    pub fn new(tools: &[Tool]) -> CallParser {
        CallParser::with_format(tools, Format::Hermes)
    }

    /// A parser that also knows `format`'s own call shape (GLM-4's `name\n{…}` answers; the
    /// Hermes tags and JSON objects are recognised whatever the format).
    pub fn with_format(tools: &[Tool], format: Format) -> CallParser {
        CallParser {
            format,
            names: tools.iter().map(|t| t.name.clone()).collect(),
            state: State::Start,
            buf: String::new(),
            ws: String::new(),
            calls: 0,
        }
    }

    /// Feed answer text; returns what is decided.
    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        self.buf.push_str(text);
        let mut out = Vec::new();
        self.run(&mut out, false);
        out
    }

    /// The answer ended: decide what is left.
    pub fn finish(&mut self) -> Vec<Piece> {
        let mut out = Vec::new();
        self.run(&mut out, true);
        out
    }

    fn text(&mut self, out: &mut Vec<Piece>, s: &str) {
        let body = s.trim_end();
        if !body.is_empty() {
            let t = std::mem::take(&mut self.ws) + body;
            match out.last_mut() {
                Some(Piece::Text(prev)) => prev.push_str(&t),
                _ => out.push(Piece::Text(t)),
            }
        }
        if !s.is_empty() {
            self.ws.push_str(&s[body.len()..]);
        }
    }

    /// Calls found, numbered in the answer's order.
    fn emit(&mut self, out: &mut Vec<Piece>, calls: Vec<(String, String)>) {
        self.ws.clear();
        for (name, arguments) in calls {
            out.push(Piece::Call(ToolCall {
                index: self.calls,
                name,
                arguments,
            }));
            self.calls += 1;
        }
    }

    fn call(&mut self, out: &mut Vec<Piece>, json: &str) -> bool {
        let Some(call) = parse_call(json, &self.names) else {
            return false;
        };
        self.emit(out, vec![call]);
        true
    }

    fn run(&mut self, out: &mut Vec<Piece>, end: bool) {
        loop {
            match self.state {
                State::Start => {
                    let t = self.buf.trim_start();
                    if t.is_empty() {
                        self.buf.clear();
                        return;
                    }
                    let t = t.to_owned();
                    self.buf = t;
                    let glm = self.format == Format::Glm4;
                    let heads = self.names.iter().map(|n| format!("{n}\n"));
                    let mut named = false;
                    let mut maybe = false;
                    for h in heads.filter(|_| glm) {
                        named |= self.buf.starts_with(&h);
                        maybe |= h.starts_with(&self.buf);
                    }
                    if !named && maybe && !end {
                        return; // may still become `name\n{…}`
                    }
                    self.state = if self.buf.starts_with('{') || named {
                        State::Bare
                    } else {
                        State::Text
                    };
                }
                State::Text => {
                    let markers = [OPEN, FENCES[0], FENCES[1]];
                    let found = markers
                        .iter()
                        .filter_map(|m| self.buf.find(m).map(|p| (p, *m)))
                        .min_by_key(|&(p, _)| p);
                    match found {
                        Some((p, m)) => {
                            let before = self.buf[..p].to_owned();
                            self.text(out, &before);
                            self.buf.drain(..p);
                            self.state = if m == OPEN {
                                State::Tagged
                            } else {
                                State::Fenced(m.len())
                            };
                        }
                        None => {
                            // Hold back a tail that may be the start of a marker.
                            let hold = if end {
                                0
                            } else {
                                partial_suffix(&self.buf, &markers)
                            };
                            let cut = self.buf.len() - hold;
                            let s = self.buf[..cut].to_owned();
                            self.text(out, &s);
                            self.buf.drain(..cut);
                            if end {
                                self.ws.clear();
                            }
                            return;
                        }
                    }
                }
                State::Tagged => {
                    let close = self.buf.find(CLOSE);
                    if close.is_none() && !end {
                        return;
                    }
                    let stop = close.unwrap_or(self.buf.len());
                    let block = self.buf[OPEN.len()..stop].to_owned();
                    if !self.call(out, &block) {
                        let raw = self.buf[..(stop + CLOSE.len()).min(self.buf.len())].to_owned();
                        self.text(out, &raw);
                    }
                    self.buf.drain(..(stop + CLOSE.len()).min(self.buf.len()));
                    self.state = State::Text;
                }
                State::Fenced(open) => {
                    let close = self.buf[open..].find("```").map(|p| p + open);
                    if close.is_none() && !end {
                        return;
                    }
                    let stop = close.unwrap_or(self.buf.len());
                    let block = self.buf[open..stop].to_owned();
                    let taken = (stop + 3).min(self.buf.len());
                    if !self.call(out, &block) {
                        let raw = self.buf[..taken].to_owned();
                        self.text(out, &raw);
                    }
                    self.buf.drain(..taken);
                    self.state = State::Text;
                }
                State::Bare => {
                    if !end {
                        return;
                    }
                    let all = std::mem::take(&mut self.buf);
                    if !self.bare_calls(out, &all) && !self.named_calls(out, &all) {
                        self.text(out, &all);
                    }
                    self.ws.clear();
                    self.state = State::Text;
                    return;
                }
            }
        }
    }

    /// A whole answer of one or more JSON call objects (separated by whitespace or by `;`, as
    /// Llama 3.x writes parallel calls).
    fn bare_calls(&mut self, out: &mut Vec<Piece>, all: &str) -> bool {
        let mut found = Vec::new();
        let mut rest = all.trim();
        while !rest.is_empty() {
            let mut de = serde_json::Deserializer::from_str(rest)
                .into_iter::<&serde_json::value::RawValue>();
            let Some(Ok(raw)) = de.next() else {
                return false;
            };
            let Some(c) = parse_call(raw.get(), &self.names) else {
                return false;
            };
            found.push(c);
            rest = rest[de.byte_offset()..].trim_start();
            rest = rest.strip_prefix(';').unwrap_or(rest).trim_start();
        }
        if found.is_empty() {
            return false;
        }
        self.emit(out, found);
        true
    }

    /// GLM-4's calls: `name\n{arguments}`, one after another.
    fn named_calls(&mut self, out: &mut Vec<Piece>, all: &str) -> bool {
        if self.format != Format::Glm4 {
            return false;
        }
        let mut found = Vec::new();
        let mut rest = all.trim();
        while !rest.is_empty() {
            let Some((name, after)) = rest.split_once('\n') else {
                return false;
            };
            let name = name.trim();
            if !self.names.iter().any(|n| n == name) {
                return false;
            }
            let mut de = serde_json::Deserializer::from_str(after)
                .into_iter::<&serde_json::value::RawValue>();
            let Some(Ok(raw)) = de.next() else {
                return false;
            };
            if !raw.get().trim_start().starts_with('{') {
                return false;
            }
            found.push((name.to_owned(), raw.get().to_owned()));
            rest = after[de.byte_offset()..].trim_start();
        }
        if found.is_empty() {
            return false;
        }
        self.emit(out, found);
        true
    }
}

/// The longest tail of `s` that is a proper prefix of one of `markers`.
fn partial_suffix(s: &str, markers: &[&str]) -> usize {
    let mut best = 0;
    for m in markers {
        for k in (1..m.len()).rev() {
            if k > best && s.ends_with(&m[..k]) {
                best = k;
                break;
            }
        }
    }
    best
}

/// `{"name": <known tool>, "arguments" | "parameters": {...}}` → the name and the arguments'
/// JSON text (a string holding a JSON object is unwrapped).
fn parse_call(json: &str, names: &[String]) -> Option<(String, String)> {
    #[derive(serde::Deserialize)]
    struct Raw<'a> {
        name: String,
        #[serde(borrow, alias = "parameters")]
        arguments: Option<&'a serde_json::value::RawValue>,
    }
    let raw: Raw = serde_json::from_str(json.trim()).ok()?;
    if !names.contains(&raw.name) {
        return None;
    }
    let arguments = match raw.arguments {
        None => "{}".to_owned(),
        Some(a) => {
            let v: Value = serde_json::from_str(a.get()).ok()?;
            match v {
                Value::Object(_) => a.get().to_owned(),
                Value::String(s) if matches!(serde_json::from_str(&s), Ok(Value::Object(_))) => s,
                _ => return None,
            }
        }
    };
    Some((raw.name, arguments))
}
