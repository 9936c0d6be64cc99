//! Text ↔ token ids. Byte-level BPE vocabularies (from `tokenizer.json` or a GGUF's embedded
//! vocabulary) run through the `tokenizers` crate; GGUF SentencePiece vocabularies through
//! `spm.rs`. Text from users is never turned into control tokens unless asked (`parse_special`).
#![forbid(unsafe_code)]

mod bytes;
mod chat;
mod gguf_vocab;
mod spm;
mod stream;
pub mod template;

pub use chat::{chat_prompt, chat_prompt_full, chat_prompt_with};
pub use stream::StreamDecoder;
pub use template::{ChatMessage, ChatTemplate, RenderTemplate, TemplateError, TemplateExtra};

use std::collections::HashSet;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
#[error("{source_name}: tokenizer: {problem}")]
pub struct TokenizerError {
    pub source_name: String,
    pub problem: String,
}

pub(crate) enum Engine {
    /// `special` parses control-token strings; `plain` treats them as text.
    Hf {
        special: Box<tokenizers::Tokenizer>,
        plain: Box<tokenizers::Tokenizer>,
    },
    Spm(Box<spm::Spm>),
}

pub struct Tokenizer {
    engine: Engine,
    /// The bytes each token stands for when printed (empty for control tokens).
    token_bytes: Vec<Vec<u8>>,
    /// Control / special token ids (never printed).
    control: HashSet<u32>,
    /// Unused filler entries (GGUF token type 5, `[PADn]`), never produced by encoding.
    padding: HashSet<u32>,
    pub bos_id: Option<u32>,
    pub add_bos: bool,
    /// End-of-generation ids.
    pub eog_ids: HashSet<u32>,
    pub eos_id: Option<u32>,
    pub chat_template: Option<String>,
    pub bos_token: String,
    pub eos_token: String,
}

impl Tokenizer {
    pub fn from_gguf(f: &suanli_formats::gguf::GgufFile) -> Result<Tokenizer, TokenizerError> {
        gguf_vocab::build(f).map_err(|problem| TokenizerError {
            source_name: f.path.display().to_string(),
            problem,
        })
    }

    pub fn from_hf_dir(dir: &Path) -> Result<Tokenizer, TokenizerError> {
        gguf_vocab::build_hf(dir).map_err(|problem| TokenizerError {
            source_name: dir.display().to_string(),
            problem,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.token_bytes.len()
    }

    /// Token ids for `text`, without BOS. With `parse_special`, control-token strings such as
    /// `<|im_start|>` become their tokens; without, they are tokenized as plain text.
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>, String> {
        match &self.engine {
            Engine::Hf { special, plain } => {
                let t = if parse_special { special } else { plain };
                t.encode(text, false)
                    .map(|e| e.get_ids().to_vec())
                    .map_err(|e| e.to_string())
            }
            Engine::Spm(s) => Ok(s.encode(text, parse_special)),
        }
    }

    /// `encode`, with BOS first where the model adds one.
    pub fn encode_prompt(&self, text: &str, parse_special: bool) -> Result<Vec<u32>, String> {
        let mut ids = Vec::new();
        if self.add_bos {
            if let Some(b) = self.bos_id {
                ids.push(b);
            }
        }
        ids.extend(self.encode(text, parse_special)?);
        Ok(ids)
    }

    /// The bytes a token prints as (control tokens print nothing).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.token_bytes
            .get(id as usize)
            .map(|v| v.as_slice())
            .unwrap_or(&[])
    }

    pub fn is_control(&self, id: u32) -> bool {
        self.control.contains(&id)
    }

    pub fn is_eog(&self, id: u32) -> bool {
        self.eog_ids.contains(&id)
    }

    /// Whether `id` is an unused filler entry (`[PADn]`, GGUF token type 5).
    pub fn is_padding(&self, id: u32) -> bool {
        self.padding.contains(&id)
    }

    /// Why a model of tokenizer `draft` cannot draft for this one's, if it cannot: every id
    /// both have must be the same token, and an id only one has must be padding there —
    /// Qwen2.5-0.5B (151,936 entries) drafts for Qwen2.5-7B (152,064: 128 more `[PADn]`).
    pub fn drafting_mismatch(&self, draft: &Tokenizer) -> Option<String> {
        let common = self.vocab_size().min(draft.vocab_size()) as u32;
        if let Some(id) = (0..common).find(|&id| self.token_text(id) != draft.token_text(id)) {
            return Some(format!(
                "token {id} is {:?} in the model's vocabulary and {:?} in the draft model's",
                self.token_text(id),
                draft.token_text(id)
            ));
        }
        let (longer, whose, other) = match self.vocab_size() > draft.vocab_size() {
            true => (self, "the model's", "the draft model's"),
            false => (draft, "the draft model's", "the model's"),
        };
        let extra = (common..longer.vocab_size() as u32).find(|&id| !longer.is_padding(id));
        extra.map(|id| {
            format!(
                "{whose} token {id} ({:?}) is not among {other} {common} tokens (only padding \
                 may differ)",
                longer.token_text(id)
            )
        })
    }

    /// Text of a token sequence (invalid UTF-8 replaced), control tokens omitted.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut b = Vec::new();
        for &id in ids {
            b.extend_from_slice(self.token_bytes(id));
        }
        String::from_utf8_lossy(&b).into_owned()
    }

    /// The vocabulary string of a token (for display).
    pub fn token_text(&self, id: u32) -> String {
        match &self.engine {
            Engine::Hf { special, .. } => special.id_to_token(id).unwrap_or_default(),
            Engine::Spm(s) => s.token_text(id).to_owned(),
        }
    }

    pub fn template(&self) -> Option<Result<ChatTemplate, TemplateError>> {
        self.chat_template
            .as_ref()
            .map(|src| ChatTemplate::new(src, &self.bos_token, &self.eos_token))
    }
}
