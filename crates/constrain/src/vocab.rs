//! The model's vocabulary as llguidance sees it: every token's bytes in a trie, built once per
//! model (byte-level BPE and SentencePiece alike: both give each token's bytes), shared by every
//! grammar compiled for it.

use llguidance::api::ParserLimits;
use llguidance::toktrie::{InferenceCapabilities, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::ParserFactory;
use std::sync::Arc;
use suanli_tokenizer::Tokenizer;

/// Tokens as the trie needs them, and how text is tokenized back (for a grammar's forced text).
struct Env {
    tok: Arc<Tokenizer>,
    trie: TokTrie,
}

impl TokenizerEnv for Env {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<u32> {
        match std::str::from_utf8(s) {
            Ok(text) => self
                .tok
                .encode(text, false)
                .unwrap_or_else(|_| self.trie.greedy_tokenize(s)),
            Err(_) => self.trie.greedy_tokenize(s),
        }
    }
}

/// One model's grammar compiler: its token trie and end-of-generation tokens.
pub struct Vocab {
    pub(crate) factory: ParserFactory,
    /// Tokens that end a generation (allowed exactly when the constrained text may end).
    pub(crate) eog: Arc<[u32]>,
    /// The model's vocabulary (rows of its logits; may exceed the tokenizer's).
    pub(crate) size: usize,
}

impl Vocab {
    /// `model_vocab`: the logits' width (Qwen2.5 pads 151,665 tokens to 151,936 rows; the
    /// padding tokens have no bytes and are never allowed).
    pub fn new(tok: Arc<Tokenizer>, model_vocab: usize) -> Result<Vocab, String> {
        let n = model_vocab.max(tok.vocab_size());
        let mut eog: Vec<u32> = tok.eog_ids.iter().copied().collect();
        eog.sort_unstable();
        let Some(&first_eog) = eog.first() else {
            return Err("the model declares no end-of-generation token".into());
        };
        let words: Vec<Vec<u8>> = (0..n as u32)
            .map(|id| {
                if id as usize >= tok.vocab_size() {
                    Vec::new()
                } else if tok.is_control(id) {
                    // Special tokens: a marker byte and their name, so that grammars can name
                    // them (`<|im_end|>`) and plain text never matches them.
                    let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    w.extend_from_slice(tok.token_text(id).as_bytes());
                    w
                } else {
                    tok.token_bytes(id).to_vec()
                }
            })
            .collect();
        let info = TokRxInfo {
            vocab_size: n as u32,
            tok_eos: first_eog,
            tok_bos: tok.bos_id,
            tok_pad: None,
            tok_unk: None,
            tok_end_of_turn: None,
        };
        let trie = TokTrie::from(&info, &words).with_eos_tokens(&eog);
        let env = Arc::new(Env { tok, trie });
        let mut factory = ParserFactory::new(
            &(env as llguidance::toktrie::TokEnv),
            InferenceCapabilities::default(),
            &llguidance::earley::SlicedBiasComputer::general_slices(),
        )
        .map_err(|e| e.to_string())?;
        factory.quiet();
        *factory.limits_mut() = ParserLimits {
            verbose_errors: false,
            ..ParserLimits::default()
        };
        Ok(Vocab {
            factory,
            eog: eog.into(),
            size: model_vocab,
        })
    }

    /// The logits' width this vocabulary was built for.
    pub fn size(&self) -> usize {
        self.size
    }
}
