//! What every handler shares.

use crate::metrics::Metrics;
use crate::worker::Worker;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use suanli_constrain::Vocab;
use suanli_tokenizer::{RenderTemplate, Tokenizer};

/// The chat template renderer handlers share.
pub type Renderer = Arc<dyn RenderTemplate + Send + Sync>;

pub struct AppState {
    pub worker: Arc<Worker>,
    pub tokenizer: Arc<Tokenizer>,
    pub metrics: Arc<Metrics>,
    /// The id clients name in `model`.
    pub model_name: String,
    pub api_key: Option<String>,
    /// Longest context (prompt + answer) of one sequence.
    pub max_ctx: usize,
    /// Token ids accepted in prompts and `logit_bias`.
    pub vocab: usize,
    /// Unix time the server started (`created` of the model).
    pub created: u64,
    /// SIGTERM seen: no new generations.
    pub draining: AtomicBool,
    /// The chat template (sandboxed or not), or why chat is unavailable.
    pub template: Result<Renderer, String>,
    /// The logits' width (constraints mask that many tokens).
    pub model_vocab: usize,
    /// The vocabulary trie grammars are compiled for, built on first use.
    pub grammar_vocab: OnceLock<Result<Arc<Vocab>, String>>,
    /// `--reasoning-format separate`.
    pub reasoning_separate: bool,
}

impl AppState {
    /// The grammar vocabulary (blocks while it is built: call off the async workers).
    pub fn grammar_vocab(&self) -> Result<Arc<Vocab>, String> {
        self.grammar_vocab
            .get_or_init(|| Vocab::new(self.tokenizer.clone(), self.model_vocab).map(Arc::new))
            .clone()
    }

    /// Printable text of a token (control tokens by their name).
    pub fn token_string(&self, id: u32) -> (String, Vec<u8>) {
        let t = &self.tokenizer;
        let bytes = t.token_bytes(id);
        if bytes.is_empty() {
            let s = t.token_text(id);
            let b = s.as_bytes().to_vec();
            (s, b)
        } else {
            (String::from_utf8_lossy(bytes).into_owned(), bytes.to_vec())
        }
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A random id suffix (24 hex digits) without a random-number crate.
pub fn random_hex() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut out = String::new();
    for i in 0..2u64 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(i);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        out.push_str(&format!("{:012x}", h.finish() & 0xffff_ffff_ffff));
    }
    out
}
