//! Perplexity by llama.cpp's `llama-perplexity` method: consecutive chunks of `ctx` tokens (the
//! first replaced by BOS where the model adds one), scoring positions ctx/2 .. ctx-2, each
//! predicting the next token.

use crate::session::{Session, SessionError};
use suanli_backend::Backend;

#[derive(Clone, Debug)]
pub struct Perplexity {
    pub perplexity: f64,
    pub n_chunks: usize,
    pub n_scored: usize,
    /// Sum of negative log-likelihoods.
    pub nll: f64,
    /// Each scored token's log-probability, in order (what per-token comparisons with another
    /// engine use).
    pub token_logprobs: Vec<f64>,
}

/// `progress(chunk, n_chunks, ppl_so_far)` is called after each chunk.
pub fn perplexity<B: Backend>(
    session: &mut Session<B>,
    tokens: &[u32],
    ctx: usize,
    bos: Option<u32>,
    progress: &mut dyn FnMut(usize, usize, f64),
) -> Result<Perplexity, PerplexityError> {
    if ctx < 4 {
        return Err(PerplexityError::CtxTooSmall(ctx));
    }
    let n_chunks = tokens.len() / ctx;
    if n_chunks == 0 {
        return Err(PerplexityError::TooFewTokens {
            have: tokens.len(),
            need: ctx,
        });
    }
    let vocab = session.model.vocab_size();
    let first = ctx / 2;
    let (mut nll, mut n) = (0f64, 0usize);
    let mut token_logprobs = Vec::with_capacity(n_chunks * (ctx - 1 - first));
    for c in 0..n_chunks {
        let mut chunk = tokens[c * ctx..(c + 1) * ctx].to_vec();
        if let Some(b) = bos {
            chunk[0] = b;
        }
        session.reset();
        let logits = session.feed(&chunk, first)?;
        for (r, pos) in (first..ctx - 1).enumerate() {
            let row = &logits[r * vocab..(r + 1) * vocab];
            let target = tokens[c * ctx + pos + 1] as usize;
            let lp = log_softmax_at(row, target);
            nll -= lp;
            token_logprobs.push(lp);
            n += 1;
        }
        progress(c + 1, n_chunks, (nll / n as f64).exp());
    }
    session.reset();
    Ok(Perplexity {
        perplexity: (nll / n as f64).exp(),
        n_chunks,
        n_scored: n,
        nll,
        token_logprobs,
    })
}

/// ln p of token `i` under the softmax of `row`, normalized as `sampler::logprobs` normalizes
/// (`sampler::log_normalizer`: within 1e-7 of llama-perplexity's f64 sum of f32 `expf`). One
/// f64 `exp` a logit took 0.71 ms per scored token of a 151,936-logit vocabulary; this 0.19.
fn log_softmax_at(row: &[f32], i: usize) -> f64 {
    // A NaN or infinite logit leaves the perplexity NaN, as f64's exp would, not ignored.
    if suanli_core::scan::first_nonfinite(row).is_some() {
        return f64::NAN;
    }
    row[i] as f64 - crate::sampler::log_normalizer(row)
}

#[derive(Debug, thiserror::Error)]
pub enum PerplexityError {
    #[error("--ctx {0} is too small (at least 4)")]
    CtxTooSmall(usize),
    #[error("the text has {have} tokens; perplexity needs at least one chunk of {need}")]
    TooFewTokens { have: usize, need: usize },
    #[error(transparent)]
    Session(#[from] SessionError),
}

#[cfg(test)]
mod tests {
    use super::log_softmax_at;

    /// Within 1e-6 of one plain pass in f64 on a vocabulary-sized row (with a tail past the
    /// lanes); a NaN or infinite logit gives NaN.
    #[test]
    fn log_softmax_equals_a_plain_f64_pass() {
        let row: Vec<f32> = (0..151_001)
            .map(|i| ((i as f32 * 0.73).sin() * 9.0).round() / 2.0 + (i % 13) as f32 * 0.1)
            .collect();
        let max = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
        let lse = max
            + row
                .iter()
                .map(|&v| (v as f64 - max).exp())
                .sum::<f64>()
                .ln();
        for i in [0, 77, 150_999, 151_000] {
            let got = log_softmax_at(&row, i);
            assert!((got - (row[i] as f64 - lse)).abs() < 1e-6, "{i}: {got}");
        }
        for bad in [f32::NAN, f32::INFINITY] {
            let mut r = row.clone();
            r[500] = bad;
            assert!(log_softmax_at(&r, 3).is_nan());
        }
    }
}
