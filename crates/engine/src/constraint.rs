//! What the engine knows of constrained decoding: a sequence may carry a `TokenConstraint` (a
//! JSON schema, a regular expression, a grammar, a tool-call format, compiled elsewhere) that
//! says which tokens may come next. The engine samples as usual, asks whether the sampled token
//! is allowed, and only when it is not asks for the whole mask and draws again from the allowed
//! tokens — so a constraint costs a mask only on the steps where the model strays, and a
//! sequence without one costs nothing.

/// One sequence's constraint. Tokens are ids of the model's vocabulary (the logits' rows);
/// end-of-generation tokens are allowed exactly when the constrained text may end.
pub trait TokenConstraint: Send {
    /// Whether `token` may come next.
    fn allows(&mut self, token: u32) -> bool;
    /// Set the logit of every token that may not come next to NaN, which the sampler never
    /// draws (−∞ would still weigh e^−87 in its vectorized exponential). An error means the
    /// constraint cannot go on (its matcher failed).
    fn mask(&mut self, logits: &mut [f32]) -> Result<(), String>;
    /// `token` was taken (one `allows` said yes to, or one drawn after `mask`).
    fn accept(&mut self, token: u32) -> Result<(), String>;
    /// The tokens expected next whatever the model prefers: the text the grammar forces here
    /// (a JSON schema's keys and punctuation), as its usual tokenization. Only a proposal —
    /// the model may spell the same text with other tokens — so speculative decoding drafts
    /// them and verifies each like any draft. Leaves the constraint's state as it was.
    fn forced(&mut self) -> Vec<u32> {
        Vec::new()
    }
}

/// Draw with `draw`; when `constraint` refuses the token, mask the logits and draw again (the
/// order llama.cpp's grammar sampler uses: the unconstrained draw is kept when it is allowed, so
/// greedy answers are exactly the argmax over the allowed tokens). Then the constraint takes the
/// token. `logits` must be what `draw` draws from. Returns the token and whether the mask was
/// needed.
pub fn constrained_pick(
    constraint: &mut dyn TokenConstraint,
    logits: &mut [f32],
    mut draw: impl FnMut(&[f32]) -> u32,
) -> Result<(u32, bool), String> {
    let mut tok = draw(logits);
    let masked = !constraint.allows(tok);
    if masked {
        constraint.mask(logits)?;
        tok = draw(logits);
        if logits.get(tok as usize).is_none_or(|l| l.is_nan()) {
            return Err("the constraint allows no token here".into());
        }
    }
    constraint.accept(tok)?;
    Ok((tok, masked))
}

/// How a sequence's failure message starts when its constraint could not go on.
pub const FAILED: &str = "constrained decoding";

/// What constrained decoding has cost: tokens checked, masks computed, seconds in both.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ConstraintStats {
    pub tokens: u64,
    pub masks: u64,
    pub secs: f64,
}
