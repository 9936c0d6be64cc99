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

fn log_softmax_at(row: &[f32], i: usize) -> f64 {
    let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
    row[i] as f64 - max - sum.ln()
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
