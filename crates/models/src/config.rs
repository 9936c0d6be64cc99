//! Hyperparameters, read from GGUF metadata or `config.json`, validated before anything is built.

use serde_json::Value as Json;
use suanli_backend::RopeStyle;
use suanli_formats::gguf::GgufFile;
use suanli_formats::ModelSource;

pub use crate::moe::{FeedForward, Moe};
pub use crate::rope::{RopeScaling, Yarn};

/// The MLP's gated activation: act(x · gateᵀ) ⊙ (x · upᵀ), then the down projection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mlp {
    /// SwiGLU (Llama, Qwen, GLM).
    SiluGated,
    /// GeGLU with the tanh approximation of GELU (Gemma).
    GeluTanhGated,
}

/// Which products must not round their activations beyond f32 (a backend with quantized
/// activations then takes two passes): a family whose outputs are sensitive to that rounding
/// asks for it. `SUANLI_EXACT_ACTIVATIONS=off|head|all` overrides the family's choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExactActivations {
    Off,
    /// The output projection (logits), where the rounding lands on the answer directly.
    Head,
    /// Every matrix product.
    All,
}

impl ExactActivations {
    pub fn parse(s: &str) -> Option<ExactActivations> {
        match s {
            "off" => Some(ExactActivations::Off),
            "head" => Some(ExactActivations::Head),
            "all" => Some(ExactActivations::All),
            _ => None,
        }
    }
}

/// The positions a layer's queries attend to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerAttention {
    /// Every earlier position.
    Full,
    /// The last `window` positions, the query's own included.
    Sliding { window: usize },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Qwen2,
    Llama,
    Qwen3,
    Glm4,
    Gemma3,
    /// Qwen1.5-MoE / Qwen2-MoE: Qwen2's attention, routed experts plus a gated shared expert.
    Qwen2Moe,
    /// Qwen3-MoE: Qwen3's attention, routed experts renormalised over the chosen ones.
    Qwen3Moe,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Qwen2 => "qwen2",
            Arch::Llama => "llama",
            Arch::Qwen3 => "qwen3",
            Arch::Glm4 => "glm4",
            Arch::Gemma3 => "gemma3",
            Arch::Qwen2Moe => "qwen2moe",
            Arch::Qwen3Moe => "qwen3moe",
        }
    }

    /// Whether the architecture's feed-forward blocks may be mixtures of experts.
    pub fn has_experts(self) -> bool {
        matches!(self, Arch::Qwen2Moe | Arch::Qwen3Moe)
    }

    fn from_gguf(name: &str) -> Option<Arch> {
        Some(match name {
            "qwen2" => Arch::Qwen2,
            "llama" | "mistral" => Arch::Llama,
            "qwen3" => Arch::Qwen3,
            "glm4" => Arch::Glm4,
            "gemma3" => Arch::Gemma3,
            "qwen2moe" => Arch::Qwen2Moe,
            "qwen3moe" => Arch::Qwen3Moe,
            _ => return None,
        })
    }

    fn from_hf(architecture: &str, model_type: &str) -> Option<Arch> {
        Some(match (architecture, model_type) {
            ("Qwen2ForCausalLM", _) | (_, "qwen2") => Arch::Qwen2,
            ("LlamaForCausalLM" | "MistralForCausalLM", _) | (_, "llama" | "mistral") => {
                Arch::Llama
            }
            ("Qwen3ForCausalLM", _) | (_, "qwen3") => Arch::Qwen3,
            ("Glm4ForCausalLM", _) | (_, "glm4") => Arch::Glm4,
            // The text model; the multimodal `gemma3` checkpoints nest it under text_config.
            ("Gemma3ForCausalLM", _) | (_, "gemma3_text") => Arch::Gemma3,
            ("Qwen2MoeForCausalLM", _) | (_, "qwen2_moe") => Arch::Qwen2Moe,
            ("Qwen3MoeForCausalLM", _) | (_, "qwen3_moe") => Arch::Qwen3Moe,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    /// Leading dims of each head that rotate.
    pub rotary_dim: usize,
    pub rope_style: RopeStyle,
    /// Context extension of the rotary frequencies (linear, llama3, YaRN), if any.
    pub rope_scaling: RopeScaling,
    /// What each layer attends to: everything before it, or a window (Mistral: every layer;
    /// Gemma 3: five of every six).
    pub layer_attention: Vec<LayerAttention>,
    /// The rotary base of sliding-window layers, unscaled, where it differs from the full
    /// layers' (Gemma 3's local layers).
    pub sliding_rope_theta: Option<f32>,
    /// Multiplies Q·K before the softmax: 1/√head_dim, or Gemma's 1/√query_pre_attn_scalar.
    pub attention_scale: f32,
    /// The token embeddings are multiplied by this (Gemma: √hidden_size).
    pub embed_scale: Option<f32>,
    pub mlp: Mlp,
    /// Per layer: one MLP, or the experts of `moe`.
    pub layer_ffn: Vec<FeedForward>,
    /// The experts' shape and routing, for models with sparse layers.
    pub moe: Option<Moe>,
    /// Which products take exact activations (the head's top candidates by default).
    pub exact_activations: ExactActivations,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct ConfigError {
    pub path: String,
    pub problem: String,
}

const MAX_LAYERS: usize = 1024;
const MAX_DIM: usize = 1 << 20;
const MAX_HEADS: usize = 4096;

impl ModelConfig {
    pub fn from_source(src: &ModelSource) -> Result<ModelConfig, ConfigError> {
        let path = src.path().display().to_string();
        let err = |problem: String| ConfigError {
            path: path.clone(),
            problem,
        };
        let mut cfg = match src {
            ModelSource::Gguf { file, .. } => from_gguf(file).map_err(err)?,
            ModelSource::Hf(d) => from_hf(&d.config).map_err(err)?,
        };
        // Vocabulary size comes from the embedding table (GGUF carries no reliable field for it).
        let emb = src.tensor("model.embed_tokens.weight").ok_or_else(|| {
            err("tensor model.embed_tokens.weight (token_embd) is missing".into())
        })?;
        if emb.shape.len() != 2 || emb.shape[1] != cfg.hidden_size {
            return Err(err(format!(
                "token embedding shape {:?} does not match hidden size {}",
                emb.shape, cfg.hidden_size
            )));
        }
        if cfg.vocab_size == 0 {
            cfg.vocab_size = emb.shape[0];
        } else if cfg.vocab_size != emb.shape[0] {
            return Err(err(format!(
                "vocab_size {} but the embedding table has {} rows",
                cfg.vocab_size, emb.shape[0]
            )));
        }
        if let Ok(v) = std::env::var("SUANLI_EXACT_ACTIVATIONS") {
            cfg.exact_activations = ExactActivations::parse(&v).ok_or_else(|| {
                err(format!(
                    "SUANLI_EXACT_ACTIVATIONS={v:?} is not one of off, head, all"
                ))
            })?;
        }
        cfg.validate().map_err(err)?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), String> {
        let in_range = |name: &str, v: usize, max: usize| {
            if v == 0 || v > max {
                Err(format!("{name} = {v} is out of range (1..={max})"))
            } else {
                Ok(())
            }
        };
        in_range("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS)?;
        in_range("hidden_size", self.hidden_size, MAX_DIM)?;
        in_range("intermediate_size", self.intermediate_size, MAX_DIM * 4)?;
        in_range("num_attention_heads", self.num_attention_heads, MAX_HEADS)?;
        in_range("num_key_value_heads", self.num_key_value_heads, MAX_HEADS)?;
        in_range("head_dim", self.head_dim, 4096)?;
        in_range("vocab_size", self.vocab_size, 1 << 24)?;
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if self.rotary_dim == 0
            || self.rotary_dim > self.head_dim
            || !self.rotary_dim.is_multiple_of(2)
        {
            return Err(format!(
                "rotary dimension {} must be even and at most head_dim {}",
                self.rotary_dim, self.head_dim
            ));
        }
        if !(self.rms_norm_eps > 0.0 && self.rms_norm_eps < 1.0) {
            return Err(format!(
                "rms_norm_eps {} is out of range",
                self.rms_norm_eps
            ));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 1.0) {
            return Err(format!("rope theta {} is out of range", self.rope_theta));
        }
        if self.max_position_embeddings == 0 {
            return Err("context length is 0".into());
        }
        if self.rope_scaling.attention_factor() != 1.0 && self.rotary_dim != self.head_dim {
            // The factor is folded into the attention scale, exact only when all dims rotate.
            return Err(format!(
                "rope scaling {} with partial rotary ({} of {} dims) is not supported",
                self.rope_scaling.describe(),
                self.rotary_dim,
                self.head_dim
            ));
        }
        if !(self.attention_scale.is_finite() && self.attention_scale > 0.0) {
            return Err(format!(
                "attention scale {} is out of range",
                self.attention_scale
            ));
        }
        if let Some(t) = self
            .sliding_rope_theta
            .filter(|t| !(t.is_finite() && *t > 1.0))
        {
            return Err(format!("sliding-window rope theta {t} is out of range"));
        }
        if self.layer_attention.len() != self.num_hidden_layers {
            return Err(format!(
                "{} layer attention kinds for {} layers",
                self.layer_attention.len(),
                self.num_hidden_layers
            ));
        }
        if self
            .layer_attention
            .contains(&LayerAttention::Sliding { window: 0 })
        {
            return Err("sliding window is 0".into());
        }
        if self.layer_ffn.len() != self.num_hidden_layers {
            return Err(format!(
                "{} feed-forward kinds for {} layers",
                self.layer_ffn.len(),
                self.num_hidden_layers
            ));
        }
        match &self.moe {
            Some(m) => m.validate()?,
            None if self.layer_ffn.contains(&FeedForward::Experts) => {
                return Err("sparse layers without an expert configuration".into())
            }
            None => {}
        }
        Ok(())
    }

    /// The longest window when every layer has one (Mistral): positions before it are never
    /// read again. `None` when any layer attends to everything.
    pub fn window_everywhere(&self) -> Option<usize> {
        self.layer_attention
            .iter()
            .map(|a| match a {
                LayerAttention::Sliding { window } => Some(*window),
                LayerAttention::Full => None,
            })
            .try_fold(0, |m, w| w.map(|w| m.max(w)))
            .filter(|&m| m > 0)
    }

    /// Where the model adds a BOS token this is reflected by the tokenizer, not here.
    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }
}

pub(crate) fn gguf_usize(f: &GgufFile, key: &str) -> Result<Option<usize>, String> {
    match f.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|x| usize::try_from(x).ok())
            .map(Some)
            .ok_or_else(|| format!("metadata {key} = {v} is not a non-negative integer")),
    }
}

fn gguf_f32(f: &GgufFile, key: &str) -> Result<Option<f32>, String> {
    match f.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .map(|x| Some(x as f32))
            .ok_or_else(|| format!("metadata {key} = {v} is not a number")),
    }
}

/// The `{arch}.*` metadata keys this crate reads; any other key under the architecture's prefix
/// may change the computation, so a file carrying one is refused by name.
const GGUF_KEYS: &[&str] = &[
    "block_count",
    "context_length",
    "embedding_length",
    "feed_forward_length",
    "attention.head_count",
    "attention.head_count_kv",
    "attention.key_length",
    "attention.value_length",
    "attention.layer_norm_rms_epsilon",
    "attention.sliding_window",
    "rope.freq_base",
    "rope.dimension_count",
    "rope.scale_linear",
    "rope.scaling.type",
    "rope.scaling.factor",
    "rope.scaling.original_context_length",
    "rope.scaling.attn_factor",
    "rope.scaling.yarn_ext_factor",
    "rope.scaling.yarn_beta_fast",
    "rope.scaling.yarn_beta_slow",
    "rope.scaling.yarn_log_multiplier",
    // Informational: whether the model was fine-tuned at the scaled length; the vocabulary size
    // is checked against the embedding table.
    "rope.scaling.finetuned",
    "vocab_size",
    "tensor_data_layout",
];

fn from_gguf(f: &GgufFile) -> Result<ModelConfig, String> {
    let arch_name = f
        .get("general.architecture")
        .and_then(|v| v.as_str())
        .ok_or("metadata general.architecture is missing")?;
    let arch = Arch::from_gguf(arch_name).ok_or_else(|| {
        format!(
            "architecture {arch_name:?} is not supported (supported: qwen2, llama, qwen3, glm4, gemma3, qwen2moe, qwen3moe)"
        )
    })?;
    let prefix = format!("{arch_name}.");
    if let Some(k) = f.metadata.keys().find(|k| {
        k.strip_prefix(&prefix).is_some_and(|rest| {
            !GGUF_KEYS.contains(&rest)
                && (!arch.has_experts() || !crate::moe::GGUF_KEYS.contains(&rest))
        })
    }) {
        return Err(format!(
            "metadata {k} is not supported: it may change the computation, and suanli refuses a file rather than ignore it"
        ));
    }
    let opt = |k: &str| gguf_usize(f, &format!("{prefix}{k}"));
    let req = |k: &str| -> Result<usize, String> {
        opt(k)?.ok_or_else(|| format!("metadata {prefix}{k} is missing"))
    };
    let hidden = req("embedding_length")?;
    let heads = req("attention.head_count")?;
    let kv_heads = opt("attention.head_count_kv")?.unwrap_or(heads);
    if heads == 0 {
        return Err(format!("metadata {prefix}attention.head_count is 0"));
    }
    let head_dim = opt("attention.key_length")?.unwrap_or(hidden / heads);
    if let Some(v) = opt("attention.value_length")?.filter(|&v| v != head_dim) {
        return Err(format!(
            "metadata {prefix}attention.value_length = {v} differs from the key length {head_dim}; not supported"
        ));
    }
    let rotary_dim = opt("rope.dimension_count")?.unwrap_or(head_dim);
    let layers = req("block_count")?.min(MAX_LAYERS + 1);
    let style = match arch {
        // The GGUF converter permutes Llama Q/K rows so that adjacent pairs rotate.
        Arch::Llama | Arch::Glm4 => RopeStyle::Interleaved,
        Arch::Qwen2 | Arch::Qwen3 | Arch::Gemma3 | Arch::Qwen2Moe | Arch::Qwen3Moe => {
            RopeStyle::Neox
        }
    };
    let window = opt("attention.sliding_window")?;
    let (layer_attention, sliding_rope_theta, attention_scale, embed_scale, mlp) = match arch {
        // What llama.cpp fixes for Gemma 3 rather than reading from the file: every sixth
        // layer global, local layers at rotary base 10000 unscaled, and queries scaled by
        // 1/√head_dim except in the 27B model (62 layers), by 1/√(hidden / heads).
        Arch::Gemma3 => {
            let window = window.ok_or(format!(
                "metadata {prefix}attention.sliding_window is missing"
            ))?;
            let kinds = (0..layers)
                .map(|i| {
                    if i % 6 < 5 {
                        LayerAttention::Sliding { window }
                    } else {
                        LayerAttention::Full
                    }
                })
                .collect();
            let q = if layers == 62 {
                hidden / heads
            } else {
                head_dim
            };
            (
                kinds,
                Some(10000.0),
                1.0 / (q as f32).sqrt(),
                Some((hidden as f32).sqrt()),
                Mlp::GeluTanhGated,
            )
        }
        _ => (
            vec![
                match window {
                    Some(window) => LayerAttention::Sliding { window },
                    None => LayerAttention::Full,
                };
                layers
            ],
            None,
            1.0 / (head_dim as f32).sqrt(),
            None,
            Mlp::SiluGated,
        ),
    };
    let num = |k: &str| -> Result<Option<f64>, String> {
        gguf_f32(f, &format!("{prefix}{k}")).map(|v| v.map(f64::from))
    };
    let kind_key = format!("{prefix}rope.scaling.type");
    let kind = match f.get(&kind_key) {
        None => None,
        Some(v) => Some(
            v.as_str()
                .ok_or_else(|| format!("metadata {kind_key} = {v} is not a string"))?,
        ),
    };
    let rope_scaling = crate::rope::from_gguf(kind, &num, rope_freqs(f)?, rotary_dim)
        .map_err(|e| format!("metadata {prefix}{e}"))?;
    let has_output = f.tensor("output.weight").is_some();
    let ff = req("feed_forward_length").or_else(|e| {
        // MoE files may leave out the dense width (no layer is dense there).
        if arch.has_experts() {
            Ok(opt("expert_feed_forward_length")?.unwrap_or(0))
        } else {
            Err(e)
        }
    })?;
    let moe = match arch {
        // As llama.cpp builds them: every layer sparse; Qwen2-MoE keeps the softmax shares,
        // Qwen3-MoE renormalises them, unless the file says otherwise.
        Arch::Qwen2Moe | Arch::Qwen3Moe => Some(crate::moe::from_gguf(
            f,
            &prefix,
            arch == Arch::Qwen2Moe,
            arch == Arch::Qwen3Moe,
            ff,
        )?),
        _ => None,
    };
    // A layer is sparse where the file has its router (llama.cpp's converter writes every
    // layer of these architectures sparse; a dense layer keeps the plain MLP's tensors).
    let layer_ffn = (0..layers)
        .map(|i| {
            let router = format!("blk.{i}.ffn_gate_inp.weight");
            if moe.is_some() && f.tensor(&router).is_some() {
                FeedForward::Experts
            } else {
                FeedForward::Dense
            }
        })
        .collect();
    Ok(ModelConfig {
        arch,
        vocab_size: 0,
        hidden_size: hidden,
        intermediate_size: ff.max(1),
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        head_dim,
        rms_norm_eps: gguf_f32(f, &format!("{prefix}attention.layer_norm_rms_epsilon"))?
            .unwrap_or(1e-6),
        rope_theta: gguf_f32(f, &format!("{prefix}rope.freq_base"))?.unwrap_or(10000.0),
        rotary_dim,
        rope_style: style,
        rope_scaling,
        layer_attention,
        sliding_rope_theta,
        attention_scale,
        embed_scale,
        mlp,
        layer_ffn,
        moe,
        exact_activations: exact_for(arch),
        max_position_embeddings: req("context_length")?,
        tie_word_embeddings: !has_output,
    })
}

/// `rope_freqs.weight`: llama.cpp's per-frequency divisors (Llama 3.1 and later), F32.
fn rope_freqs(f: &GgufFile) -> Result<Option<Vec<f32>>, String> {
    let Some(t) = f.tensor("rope_freqs.weight") else {
        return Ok(None);
    };
    if t.dtype != suanli_core::DType::F32 || t.dims.len() != 1 {
        return Err(format!(
            "tensor rope_freqs.weight is {:?} {:?}; expected a 1-D F32 vector",
            t.dtype, t.dims
        ));
    }
    let bytes = f.tensor_bytes(t);
    Ok(Some(
        bytes
            .as_slice()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    ))
}

pub(crate) fn hf_usize(c: &Json, key: &str) -> Result<Option<usize>, String> {
    match c.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|x| usize::try_from(x).ok())
            .map(Some)
            .ok_or_else(|| format!("config.json {key} = {v} is not a non-negative integer")),
    }
}

fn hf_f32(c: &Json, key: &str) -> Result<Option<f32>, String> {
    match c.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(|x| Some(x as f32))
            .ok_or_else(|| format!("config.json {key} = {v} is not a number")),
    }
}

fn from_hf(c: &Json) -> Result<ModelConfig, String> {
    let architecture = c
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(|a| a.as_str())
        .unwrap_or("");
    let model_type = c.get("model_type").and_then(|a| a.as_str()).unwrap_or("");
    let arch = Arch::from_hf(architecture, model_type).ok_or_else(|| {
        format!("architecture {architecture:?} (model_type {model_type:?}) is not supported (supported: Qwen2, Llama, Mistral, Qwen3, Glm4, Gemma3, Qwen2Moe, Qwen3MoeForCausalLM)")
    })?;
    let req = |k: &str| -> Result<usize, String> {
        hf_usize(c, k)?.ok_or_else(|| format!("config.json {k} is missing"))
    };
    let hidden = req("hidden_size")?;
    let heads = req("num_attention_heads")?;
    if heads == 0 {
        return Err("config.json num_attention_heads is 0".into());
    }
    let head_dim = hf_usize(c, "head_dim")?.unwrap_or(hidden / heads);
    // transformers 5 nests rope settings under rope_parameters (per layer type where the
    // types differ, as in Gemma 3); older files keep them at the top level.
    let block = c
        .get("rope_parameters")
        .filter(|r| r.is_object())
        .or_else(|| c.get("rope_scaling").filter(|r| r.is_object()));
    let per_type = block.filter(|b| b.get("full_attention").is_some());
    let rope = match per_type {
        Some(b) => b.get("full_attention").filter(|r| r.is_object()),
        None => block,
    };
    let sliding_rope = per_type.and_then(|b| b.get("sliding_attention"));
    let rope_field = |k: &str| -> Result<Option<f32>, String> {
        match hf_f32(c, k)? {
            Some(v) => Ok(Some(v)),
            None => rope.map(|r| hf_f32(r, k)).transpose().map(Option::flatten),
        }
    };
    let theta = rope_field("rope_theta")?.unwrap_or(10000.0);
    let default_partial = if arch == Arch::Glm4 { 0.5 } else { 1.0 };
    let partial = rope_field("partial_rotary_factor")?.unwrap_or(default_partial);
    let rotary_dim = (head_dim as f32 * partial) as usize;
    let max_ctx = hf_usize(c, "max_position_embeddings")?.unwrap_or(4096);
    let layers = req("num_hidden_layers")?.min(MAX_LAYERS + 1);
    let (rope_scaling, exact_within) = crate::rope::from_hf(rope, theta, rotary_dim, max_ctx)?;
    let sliding_rope_theta = match sliding_rope {
        Some(r) => {
            let (s, _) = crate::rope::from_hf(Some(r), theta, rotary_dim, max_ctx)?;
            if s != RopeScaling::None {
                return Err(format!(
                    "config.json rope scaling {} on sliding-window layers is not supported",
                    s.describe()
                ));
            }
            hf_f32(r, "rope_theta")?
        }
        // Gemma 3 configs written before transformers 5.
        None => hf_f32(c, "rope_local_base_freq")?,
    };
    let mlp = match arch {
        Arch::Gemma3 => Mlp::GeluTanhGated,
        _ => Mlp::SiluGated,
    };
    refuse_hf_fields(c, mlp, arch.has_experts())?;
    let (moe, layer_ffn) = if arch.has_experts() {
        let (m, kinds) = crate::moe::from_hf(c, layers, arch == Arch::Qwen2Moe)?;
        (Some(m), kinds)
    } else {
        (None, vec![FeedForward::Dense; layers])
    };
    let attention_scale = match hf_f32(c, "query_pre_attn_scalar")? {
        Some(q) if arch == Arch::Gemma3 && q > 0.0 => 1.0 / q.sqrt(),
        Some(q) if arch == Arch::Gemma3 => {
            return Err(format!(
                "config.json query_pre_attn_scalar = {q} must be positive"
            ))
        }
        _ => 1.0 / (head_dim as f32).sqrt(),
    };
    Ok(ModelConfig {
        arch,
        vocab_size: req("vocab_size")?,
        hidden_size: hidden,
        intermediate_size: req("intermediate_size")?,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: hf_usize(c, "num_key_value_heads")?.unwrap_or(heads),
        head_dim,
        rms_norm_eps: hf_f32(c, "rms_norm_eps")?.unwrap_or(1e-6),
        rope_theta: theta,
        rotary_dim,
        layer_ffn,
        moe,
        rope_style: if arch == Arch::Glm4 {
            RopeStyle::Interleaved
        } else {
            RopeStyle::Neox
        },
        rope_scaling,
        layer_attention: hf_layer_attention(c, layers)?,
        sliding_rope_theta,
        attention_scale,
        embed_scale: (arch == Arch::Gemma3).then(|| (hidden as f32).sqrt()),
        mlp,
        exact_activations: exact_for(arch),
        max_position_embeddings: exact_within.unwrap_or(max_ctx),
        tie_word_embeddings: c
            .get("tie_word_embeddings")
            .and_then(|v| v.as_bool())
            .unwrap_or(false),
    })
}

/// Per layer: `layer_types` (transformers 5) with `sliding_window`, or Mistral's
/// `sliding_window` on every layer. Qwen2 carries a window with `use_sliding_window` false; with
/// it true only some layers are windowed, which is refused.
fn hf_layer_attention(c: &Json, layers: usize) -> Result<Vec<LayerAttention>, String> {
    let window = hf_usize(c, "sliding_window")?;
    let sliding = || {
        window
            .map(|window| LayerAttention::Sliding { window })
            .ok_or("config.json has sliding_attention layers but no sliding_window")
    };
    match c.get("use_sliding_window").and_then(|v| v.as_bool()) {
        Some(false) => return Ok(vec![LayerAttention::Full; layers]),
        Some(true) => {
            return Err("config.json use_sliding_window = true (windows on some of Qwen2's layers) is not supported".into())
        }
        None => {}
    }
    // Gemma 3 configs before transformers 5: every n-th layer global, the others windowed.
    if let (None, Some(n)) = (c.get("layer_types"), hf_usize(c, "sliding_window_pattern")?) {
        let n = n.max(1);
        return (0..layers)
            .map(|i| {
                if (i + 1) % n == 0 {
                    Ok(LayerAttention::Full)
                } else {
                    Ok(sliding()?)
                }
            })
            .collect();
    }
    if let Some(types) = c.get("layer_types").and_then(|v| v.as_array()) {
        if types.len() != layers {
            return Err(format!(
                "config.json layer_types has {} entries for {layers} layers",
                types.len()
            ));
        }
        return types
            .iter()
            .map(|t| match t.as_str() {
                Some("full_attention") => Ok(LayerAttention::Full),
                Some("sliding_attention") => Ok(sliding()?),
                _ => Err(format!(
                    "config.json layer_types holds {t}, which is not supported"
                )),
            })
            .collect();
    }
    Ok(vec![
        match window {
            Some(window) => LayerAttention::Sliding { window },
            None => LayerAttention::Full,
        };
        layers
    ])
}

/// Fields that change the computation of these architectures in ways not built here.
fn refuse_hf_fields(c: &Json, mlp: Mlp, experts: bool) -> Result<(), String> {
    let want = match mlp {
        Mlp::SiluGated => "silu",
        Mlp::GeluTanhGated => "gelu_pytorch_tanh",
    };
    for key in ["hidden_act", "hidden_activation"] {
        if let Some(act) = c.get(key).filter(|v| !v.is_null()) {
            if act.as_str() != Some(want) {
                return Err(format!(
                    "config.json {key} = {act} is not supported for this architecture ({want} is)"
                ));
            }
        }
    }
    if c.get("use_bidirectional_attention")
        .and_then(|v| v.as_bool())
        == Some(true)
    {
        return Err("config.json use_bidirectional_attention = true is not supported".into());
    }
    for key in [
        "attn_logit_softcapping",
        "final_logit_softcapping",
        "num_experts",
        "num_local_experts",
    ] {
        if experts && key.starts_with("num_") {
            continue;
        }
        if let Some(v) = c
            .get(key)
            .filter(|v| !v.is_null() && v.as_f64() != Some(0.0))
        {
            return Err(format!("config.json {key} = {v} is not supported"));
        }
    }
    Ok(())
}

/// Every family's head takes exact activations for its top candidates: at a few hundred dot
/// products per logits row (no measurable decode cost on SmolLM2-135M, the worst case: the
/// largest head for its size), it keeps suanli closer than llama.cpp to the f32 computation of the
/// same weights on every real file tested.
fn exact_for(_arch: Arch) -> ExactActivations {
    ExactActivations::Head
}
