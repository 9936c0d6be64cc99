//! Reasoning models (Qwen3, DeepSeek-R1 distills) think inside `<think>…</think>` before they
//! answer. The split sends the thinking to `reasoning_content` and the rest to `content`, as
//! DeepSeek's API and vLLM do; it streams, holding back only a tail that may be a tag's start.

pub const OPEN: &str = "<think>";
pub const CLOSE: &str = "</think>";

/// Whether a chat template belongs to a reasoning model.
pub fn template_thinks(source: &str) -> bool {
    source.contains(CLOSE)
}

/// Whether the model will start its answer inside its thinking: the rendered prompt opened a
/// `<think>` block it did not close (DeepSeek-R1 distills' templates do).
pub fn prompt_opens_thinking(prompt: &str) -> bool {
    match (prompt.rfind(OPEN), prompt.rfind(CLOSE)) {
        (Some(o), Some(c)) => o > c,
        (Some(_), None) => true,
        _ => false,
    }
}

/// Whether the rendered prompt already closed the thinking (Qwen3 with `enable_thinking`
/// false writes an empty `<think>\n\n</think>` block): the answer follows at once.
pub fn prompt_closes_thinking(prompt: &str) -> bool {
    prompt.trim_end().ends_with(CLOSE)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum State {
    /// Before any text: a `<think>` here opens the thinking.
    Start,
    Thinking,
    /// Just after `</think>`: the blank lines that follow belong to the tag.
    AfterThinking,
    Answer,
}

/// Text in, (reasoning, answer) out.
pub struct ReasoningSplit {
    state: State,
    buf: String,
}

impl ReasoningSplit {
    /// `inside`: the prompt opened the thinking already.
    pub fn new(inside: bool) -> ReasoningSplit {
        ReasoningSplit {
            state: if inside {
                State::Thinking
            } else {
                State::Start
            },
            buf: String::new(),
        }
    }

    /// Feed text; returns the new reasoning and answer text.
    pub fn push(&mut self, text: &str) -> (String, String) {
        self.buf.push_str(text);
        self.run(false)
    }

    pub fn finish(&mut self) -> (String, String) {
        self.run(true)
    }

    fn run(&mut self, end: bool) -> (String, String) {
        let (mut think, mut answer) = (String::new(), String::new());
        loop {
            match self.state {
                State::Start => {
                    let t = self.buf.trim_start();
                    if t.starts_with(OPEN) {
                        let skip = self.buf.len() - t.len() + OPEN.len();
                        self.buf.drain(..skip);
                        self.state = State::Thinking;
                    } else if !end && OPEN.starts_with(t) {
                        return (think, answer); // may still become `<think>`
                    } else {
                        self.state = State::Answer;
                    }
                }
                State::Thinking => match self.buf.find(CLOSE) {
                    Some(p) => {
                        think.push_str(&self.buf[..p]);
                        self.buf.drain(..p + CLOSE.len());
                        self.state = State::AfterThinking;
                    }
                    None => {
                        let hold = if end { 0 } else { held(&self.buf, CLOSE) };
                        let cut = self.buf.len() - hold;
                        think.push_str(&self.buf[..cut]);
                        self.buf.drain(..cut);
                        return (think, answer);
                    }
                },
                State::AfterThinking => {
                    let t = self.buf.trim_start().len();
                    self.buf.drain(..self.buf.len() - t);
                    if self.buf.is_empty() {
                        return (think, answer);
                    }
                    self.state = State::Answer;
                }
                State::Answer => {
                    answer.push_str(&self.buf);
                    self.buf.clear();
                    return (think, answer);
                }
            }
        }
    }
}

/// The longest tail of `s` that is a proper prefix of `tag`.
fn held(s: &str, tag: &str) -> usize {
    (1..tag.len())
        .rev()
        .find(|&k| s.ends_with(&tag[..k]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_in_pieces(text: &str, inside: bool, step: usize) -> (String, String) {
        let mut s = ReasoningSplit::new(inside);
        let (mut r, mut a) = (String::new(), String::new());
        let chars: Vec<char> = text.chars().collect();
        for c in chars.chunks(step) {
            let (x, y) = s.push(&c.iter().collect::<String>());
            r += &x;
            a += &y;
        }
        let (x, y) = s.finish();
        (r + &x, a + &y)
    }

    #[test]
    fn thinking_is_split_from_the_answer_whatever_the_pieces() {
        let cases = [
            (
                "<think>\nhmm, 2+2\n</think>\n\n4",
                false,
                "\nhmm, 2+2\n",
                "4",
            ),
            ("hmm</think>\n\nfour", true, "hmm", "four"),
            ("just an answer", false, "", "just an answer"),
            ("<thin", false, "", "<thin"),
            ("<think>never closed", false, "never closed", ""),
            ("a < b </thin", true, "a < b </thin", ""),
        ];
        for (text, inside, think, answer) in cases {
            for step in [1, 2, 3, 100] {
                let got = split_in_pieces(text, inside, step);
                assert_eq!(
                    got,
                    (think.to_string(), answer.to_string()),
                    "{text:?} by {step}"
                );
            }
        }
    }

    #[test]
    fn prompts_that_open_or_close_thinking() {
        assert!(prompt_opens_thinking("<|Assistant|><think>\n"));
        assert!(!prompt_opens_thinking("<think>\n\n</think>\n\n"));
        assert!(prompt_closes_thinking(
            "<|im_start|>assistant\n<think>\n\n</think>\n\n"
        ));
        assert!(!prompt_closes_thinking("<|im_start|>assistant\n"));
    }
}
