//! Stop strings in streamed text: text that might be the start of a stop string is held back
//! until it is known not to be, so a stop string never leaks partially.

pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

pub enum StopStep {
    /// Text safe to emit now.
    Emit(String),
    /// A stop string matched; emit this text (what preceded it) and finish.
    Stop(String),
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> StopMatcher {
        StopMatcher {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
        }
    }

    pub fn push(&mut self, text: &str) -> StopStep {
        self.held.push_str(text);
        if let Some(pos) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            let out = self.held[..pos].to_owned();
            self.held.clear();
            return StopStep::Stop(out);
        }
        // Hold back the longest suffix that is a prefix of some stop string.
        let mut keep = 0;
        for s in &self.stops {
            for (i, _) in s.char_indices().skip(1) {
                if self.held.ends_with(&s[..i]) {
                    keep = keep.max(i);
                }
            }
        }
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_owned();
        self.held.drain(..cut);
        StopStep::Emit(out)
    }

    /// At the end of generation, whatever was held back is real text.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_stop_string_never_leaks() {
        let mut m = StopMatcher::new(vec!["</end>".into()]);
        let mut out = String::new();
        for piece in ["hello <", "/e", "nd> more"] {
            match m.push(piece) {
                StopStep::Emit(s) => out.push_str(&s),
                StopStep::Stop(s) => {
                    out.push_str(&s);
                    break;
                }
            }
        }
        assert_eq!(out, "hello ");
        let mut m = StopMatcher::new(vec!["ab".into()]);
        assert!(matches!(m.push("xa"), StopStep::Emit(s) if s == "x"));
        assert!(matches!(m.push("c"), StopStep::Emit(s) if s == "ac"));
    }
}
