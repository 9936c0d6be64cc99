//! A chat answer's text turned into the message's parts: a reasoning model's thinking
//! (`reasoning_content`), tool calls (`tool_calls`) and the rest (`content`). Streaming and
//! whole answers run the same parsers over the same text, so a stream reassembles to the whole
//! answer.

use suanli_constrain::reasoning::ReasoningSplit;
use suanli_constrain::tools::{CallParser, Format, Piece, Tool, ToolCall};

/// How a request's answers are split.
#[derive(Clone, Default)]
pub struct AnswerSpec {
    /// Split `<think>…</think>` off (a reasoning model, `--reasoning-format separate`).
    pub reasoning: bool,
    /// The prompt opened the thinking already.
    pub inside_thinking: bool,
    /// Parse tool calls of these tools (empty: no parsing), written in this format.
    pub tools: Vec<Tool>,
    pub format: Option<Format>,
}

/// New parts of one answer.
#[derive(Debug, Default, PartialEq)]
pub struct Parts {
    pub reasoning: String,
    pub content: String,
    pub calls: Vec<ToolCall>,
}

pub struct Answer {
    think: Option<ReasoningSplit>,
    calls: Option<CallParser>,
    /// Calls so far (the finish reason becomes `tool_calls`).
    pub n_calls: usize,
}

impl Answer {
    pub fn new(spec: &AnswerSpec) -> Answer {
        Answer {
            think: spec
                .reasoning
                .then(|| ReasoningSplit::new(spec.inside_thinking)),
            calls: (!spec.tools.is_empty()).then(|| {
                CallParser::with_format(&spec.tools, spec.format.unwrap_or(Format::Hermes))
            }),
            n_calls: 0,
        }
    }

    pub fn push(&mut self, text: &str) -> Parts {
        self.step(text, false)
    }

    pub fn finish(&mut self) -> Parts {
        self.step("", true)
    }

    fn step(&mut self, text: &str, end: bool) -> Parts {
        let (reasoning, answer) = match &mut self.think {
            Some(t) => {
                let (mut r, mut a) = t.push(text);
                if end {
                    let (r2, a2) = t.finish();
                    r += &r2;
                    a += &a2;
                }
                (r, a)
            }
            None => (String::new(), text.to_owned()),
        };
        let mut parts = Parts {
            reasoning,
            ..Parts::default()
        };
        match &mut self.calls {
            None => parts.content = answer,
            Some(p) => {
                let mut pieces = p.push(&answer);
                if end {
                    pieces.extend(p.finish());
                }
                for piece in pieces {
                    match piece {
                        Piece::Text(t) => parts.content.push_str(&t),
                        Piece::Call(c) => parts.calls.push(c),
                    }
                }
            }
        }
        self.n_calls += parts.calls.len();
        parts
    }
}
