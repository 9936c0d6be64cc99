//! Hyperparameters, read from GGUF metadata or `config.json`, validated before anything is built.

use serde_json::Value as Json;
use suanli_backend::RopeStyle;
use suanli_formats::gguf::GgufFile;
use suanli_formats::ModelSource;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Qwen2,
    Llama,
    Qwen3,
    Glm4,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Qwen2 => "qwen2",
            Arch::Llama => "llama",
            Arch::Qwen3 => "qwen3",
            Arch::Glm4 => "glm4",
        }
    }

    fn from_gguf(name: &str) -> Option<Arch> {
        Some(match name {
            "qwen2" => Arch::Qwen2,
            "llama" | "mistral" => Arch::Llama,
            "qwen3" => Arch::Qwen3,
            "glm4" => Arch::Glm4,
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
    /// Llama-3 style per-frequency scaling factors (divide the inverse frequencies), if any.
    pub rope_freq_factors: Option<Vec<f32>>,
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
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return Err(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if self.rotary_dim == 0 || self.rotary_dim > self.head_dim || self.rotary_dim % 2 != 0 {
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
        Ok(())
    }

    /// Where the model adds a BOS token this is reflected by the tokenizer, not here.
    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }
}

fn gguf_usize(f: &GgufFile, key: &str) -> Result<Option<usize>, String> {
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

fn from_gguf(f: &GgufFile) -> Result<ModelConfig, String> {
    let arch_name = f
        .get("general.architecture")
        .and_then(|v| v.as_str())
        .ok_or("metadata general.architecture is missing")?;
    let arch = Arch::from_gguf(arch_name).ok_or_else(|| {
        format!(
            "architecture {arch_name:?} is not supported (supported: qwen2, llama, qwen3, glm4)"
        )
    })?;
    let req = |k: &str| -> Result<usize, String> {
        gguf_usize(f, &format!("{arch_name}.{k}"))?
            .ok_or_else(|| format!("metadata {arch_name}.{k} is missing"))
    };
    let hidden = req("embedding_length")?;
    let heads = req("attention.head_count")?;
    let kv_heads = gguf_usize(f, &format!("{arch_name}.attention.head_count_kv"))?.unwrap_or(heads);
    if heads == 0 {
        return Err(format!("metadata {arch_name}.attention.head_count is 0"));
    }
    let head_dim =
        gguf_usize(f, &format!("{arch_name}.attention.key_length"))?.unwrap_or(hidden / heads);
    let rotary_dim =
        gguf_usize(f, &format!("{arch_name}.rope.dimension_count"))?.unwrap_or(head_dim);
    let style = match arch {
        // The GGUF converter permutes Llama Q/K rows so that adjacent pairs rotate.
        Arch::Llama | Arch::Glm4 => RopeStyle::Interleaved,
        Arch::Qwen2 | Arch::Qwen3 => RopeStyle::Neox,
    };
    let has_output = f.tensor("output.weight").is_some();
    Ok(ModelConfig {
        arch,
        vocab_size: 0,
        hidden_size: hidden,
        intermediate_size: req("feed_forward_length")?,
        num_hidden_layers: req("block_count")?,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        head_dim,
        rms_norm_eps: gguf_f32(f, &format!("{arch_name}.attention.layer_norm_rms_epsilon"))?
            .unwrap_or(1e-6),
        rope_theta: gguf_f32(f, &format!("{arch_name}.rope.freq_base"))?.unwrap_or(10000.0),
        rotary_dim,
        rope_style: style,
        rope_freq_factors: None,
        max_position_embeddings: req("context_length")?,
        tie_word_embeddings: !has_output,
    })
}

fn hf_usize(c: &Json, key: &str) -> Result<Option<usize>, String> {
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
        format!("architecture {architecture:?} (model_type {model_type:?}) is not supported (supported: Qwen2, Llama, Mistral, Qwen3, Glm4)")
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
    // transformers 5 nests rope settings under rope_parameters; older files keep them at the top level.
    let rope = c
        .get("rope_parameters")
        .filter(|r| r.is_object())
        .or_else(|| c.get("rope_scaling").filter(|r| r.is_object()));
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
    let rope_type = rope
        .and_then(|r| r.get("rope_type").or_else(|| r.get("type")))
        .and_then(|t| t.as_str())
        .unwrap_or("default");
    let rope_freq_factors = match rope_type {
        "default" => None,
        "llama3" => Some(llama3_factors(
            rope.expect("rope_type came from it"),
            theta,
            rotary_dim,
        )?),
        other => {
            return Err(format!(
                "rope type {other:?} is not supported (default, llama3 are)"
            ))
        }
    };
    Ok(ModelConfig {
        arch,
        vocab_size: req("vocab_size")?,
        hidden_size: hidden,
        intermediate_size: req("intermediate_size")?,
        num_hidden_layers: req("num_hidden_layers")?,
        num_attention_heads: heads,
        num_key_value_heads: hf_usize(c, "num_key_value_heads")?.unwrap_or(heads),
        head_dim,
        rms_norm_eps: hf_f32(c, "rms_norm_eps")?.unwrap_or(1e-6),
        rope_theta: theta,
        rotary_dim,
        rope_style: if arch == Arch::Glm4 {
            RopeStyle::Interleaved
        } else {
            RopeStyle::Neox
        },
        rope_freq_factors,
        max_position_embeddings: hf_usize(c, "max_position_embeddings")?.unwrap_or(4096),
        tie_word_embeddings: c
            .get("tie_word_embeddings")
            .and_then(|v| v.as_bool())
            .unwrap_or(false),
    })
}

/// Llama 3.1 frequency scaling, expressed as divisors of the inverse frequencies.
fn llama3_factors(r: &Json, theta: f32, dim: usize) -> Result<Vec<f32>, String> {
    let get = |k: &str| {
        r.get(k)
            .and_then(|v| v.as_f64())
            .ok_or_else(|| format!("rope llama3 scaling lacks {k}"))
    };
    let factor = get("factor")?;
    let low = get("low_freq_factor")?;
    let high = get("high_freq_factor")?;
    let old_ctx = get("original_max_position_embeddings")?;
    let low_wavelen = old_ctx / low;
    let high_wavelen = old_ctx / high;
    Ok((0..dim / 2)
        .map(|i| {
            let inv = 1.0 / (theta as f64).powf((2 * i) as f64 / dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / inv;
            let f = if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = (old_ctx / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            };
            f as f32
        })
        .collect())
}
