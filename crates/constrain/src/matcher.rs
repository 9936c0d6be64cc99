//! One sequence's constraint: an llguidance matcher behind the engine's `TokenConstraint`,
//! optionally waiting for a trigger text before it constrains anything (a lazy grammar).

use llguidance::toktrie::TokEnv;
use llguidance::Matcher;
use std::sync::Arc;
use suanli_engine::TokenConstraint;

pub struct Constraint {
    matcher: Matcher,
    eog: Arc<[u32]>,
    /// Lazy: the trigger text, and the answer's recent bytes while it has not appeared.
    waiting: Option<(Vec<u8>, Vec<u8>)>,
    /// The vocabulary, for the trigger watch and the text after a trigger.
    env: Option<TokEnv>,
}

impl Constraint {
    pub(crate) fn new(matcher: Matcher, eog: Arc<[u32]>, trigger: Option<String>) -> Constraint {
        let env = trigger.as_ref().and_then(|_| matcher.tok_env().ok());
        Constraint {
            matcher,
            eog,
            waiting: trigger.map(|t| (t.into_bytes(), Vec::new())),
            env,
        }
    }

    fn is_eog(&self, t: u32) -> bool {
        self.eog.contains(&t)
    }

    /// The trigger appeared ending inside the bytes just taken: the grammar starts after it,
    /// with whatever followed it in the same token.
    fn on_trigger(&mut self, rest: &[u8]) -> Result<(), String> {
        self.waiting = None;
        if rest.is_empty() {
            return Ok(());
        }
        let Some(env) = &self.env else {
            return Ok(());
        };
        let toks = env.tokenize_bytes(rest);
        let n = self
            .matcher
            .try_consume_tokens(&toks)
            .map_err(|e| e.to_string())?;
        if n < toks.len() {
            return Err(format!(
                "the text after the trigger ({:?}) does not fit the grammar",
                String::from_utf8_lossy(rest)
            ));
        }
        Ok(())
    }
}

impl TokenConstraint for Constraint {
    fn allows(&mut self, token: u32) -> bool {
        if self.waiting.is_some() {
            return true;
        }
        if self.is_eog(token) {
            return self.matcher.is_stopped() || self.matcher.is_accepting().unwrap_or(false);
        }
        matches!(self.matcher.validate_tokens(&[token]), Ok(1))
    }

    fn mask(&mut self, logits: &mut [f32]) -> Result<(), String> {
        if self.waiting.is_some() {
            return Ok(());
        }
        // End tokens exactly when the text may end (as `allows` says); the rest by the matcher's
        // mask, or none once the grammar is complete.
        let stopped = self.matcher.is_stopped();
        let end = stopped || self.matcher.is_accepting().unwrap_or(false);
        let m = if stopped {
            None
        } else {
            Some(self.matcher.compute_mask().map_err(|e| e.to_string())?)
        };
        for (i, l) in logits.iter_mut().enumerate() {
            let t = i as u32;
            let allowed = if self.is_eog(t) {
                end
            } else {
                m.as_ref().is_some_and(|m| i < m.len() && m.is_allowed(t))
            };
            if !allowed {
                *l = f32::NAN;
            }
        }
        Ok(())
    }

    fn accept(&mut self, token: u32) -> Result<(), String> {
        if let Some((trigger, seen)) = &mut self.waiting {
            let Some(env) = &self.env else {
                return Ok(());
            };
            let before = seen.len();
            seen.extend_from_slice(env.tok_trie().token(token));
            // Where a trigger could end in this token: it starts at most trigger.len() - 1
            // bytes before it.
            let from = before.saturating_sub(trigger.len().saturating_sub(1));
            if let Some(p) = find(&seen[from..], trigger) {
                let rest = seen[from + p + trigger.len()..].to_vec();
                return self.on_trigger(&rest);
            }
            let keep = trigger.len().saturating_sub(1);
            if seen.len() > keep {
                seen.drain(..seen.len() - keep);
            }
            return Ok(());
        }
        if self.is_eog(token) {
            return Ok(());
        }
        self.matcher
            .consume_token(token)
            .map_err(|e| format!("the matcher refused token {token}: {e}"))
    }

    /// llguidance's fast-forward tokens: the bytes the grammar forces next, tokenized (none
    /// while a lazy grammar waits for its trigger, or once it is complete).
    fn forced(&mut self) -> Vec<u32> {
        if self.waiting.is_some() || self.matcher.is_stopped() {
            return Vec::new();
        }
        self.matcher.compute_ff_tokens()
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}
