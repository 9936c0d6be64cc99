//! `suanli inspect`: what a model file or directory holds.

use anyhow::Result;
use std::path::Path;
use suanli_formats::{open_model, ModelSource};
use suanli_models::ModelConfig;

pub fn inspect(path: &Path) -> Result<()> {
    let src = open_model(path)?;
    crate::outln!("path: {}", path.display());
    match &src {
        ModelSource::Gguf { file, .. } => {
            crate::outln!(
                "format: GGUF v{} (alignment {})",
                file.version,
                file.alignment
            );
        }
        ModelSource::Hf(_) => crate::outln!("format: Hugging Face directory (safetensors)"),
    }
    let config = ModelConfig::from_source(&src);
    match &config {
        Ok(c) => {
            crate::outln!("architecture: {}", c.arch.name());
            crate::outln!("  vocab_size: {}", c.vocab_size);
            crate::outln!("  hidden_size: {}", c.hidden_size);
            crate::outln!("  intermediate_size: {}", c.intermediate_size);
            crate::outln!("  num_hidden_layers: {}", c.num_hidden_layers);
            crate::outln!(
                "  num_attention_heads: {} (kv heads {}, head_dim {})",
                c.num_attention_heads,
                c.num_key_value_heads,
                c.head_dim
            );
            crate::outln!(
                "  rope: theta {}, rotary_dim {}, {:?}, scaling {}",
                c.rope_theta,
                c.rotary_dim,
                c.rope_style,
                c.rope_scaling.describe()
            );
            let windows: Vec<String> = c
                .layer_attention
                .iter()
                .map(|a| match a {
                    suanli_models::LayerAttention::Full => "full".to_string(),
                    suanli_models::LayerAttention::Sliding { window } => format!("window {window}"),
                })
                .collect();
            if windows.iter().all(|w| *w == windows[0]) {
                crate::outln!("  attention: {} on every layer", windows[0]);
            } else {
                crate::outln!("  attention per layer: {}", windows.join(", "));
            }
            if let Some(m) = &c.moe {
                let sparse = c
                    .layer_ffn
                    .iter()
                    .filter(|f| **f == suanli_models::FeedForward::Experts)
                    .count();
                crate::outln!(
                    "  experts: {} of width {} on {sparse} of {} layers, {} per token ({}){}",
                    m.num_experts,
                    m.expert_intermediate_size,
                    c.num_hidden_layers,
                    m.experts_per_token,
                    if m.norm_topk_prob {
                        "shares renormalised"
                    } else {
                        "softmax shares"
                    },
                    m.shared_expert_intermediate_size
                        .map_or(String::new(), |w| format!(
                            ", a gated shared expert of width {w}"
                        ))
                );
            }
            crate::outln!("  rms_norm_eps: {}", c.rms_norm_eps);
            crate::outln!("  context_length: {}", c.max_position_embeddings);
            crate::outln!("  tied embeddings: {}", c.tie_word_embeddings);
        }
        Err(e) => crate::outln!("architecture: not runnable by suanli: {e}"),
    }
    let mut template = None;
    match &src {
        ModelSource::Gguf { file, .. } => {
            crate::outln!("metadata ({} keys):", file.metadata.len());
            for (k, v) in &file.metadata {
                if k == "tokenizer.chat_template" {
                    template = v.as_str().map(str::to_owned);
                    crate::outln!(
                        "  {k}: ({} bytes, shown below)",
                        v.as_str().map_or(0, |s| s.len())
                    );
                } else {
                    crate::outln!("  {k}: {v}");
                }
            }
        }
        ModelSource::Hf(d) => {
            crate::outln!("config.json: {}", d.config);
            let tc = d.dir.join("tokenizer_config.json");
            if let Ok(s) = std::fs::read_to_string(tc) {
                if let Ok(j) = serde_json::from_str::<serde_json::Value>(&s) {
                    template = j
                        .get("chat_template")
                        .and_then(|t| t.as_str())
                        .map(str::to_owned);
                }
            }
        }
    }
    let table = src.tensor_table();
    let total: usize = table.iter().map(|t| t.2.bytes.len()).sum();
    crate::outln!("tensors ({}, {:.1} MB):", table.len(), total as f64 / 1e6);
    crate::outln!(
        "  {:<48} {:<20} {:<6} {:>12}",
        "name",
        "shape",
        "type",
        "bytes"
    );
    for (name, _, info) in &table {
        let shape = format!("{:?}", info.shape);
        crate::outln!(
            "  {:<48} {:<20} {:<6} {:>12}",
            name,
            shape,
            info.dtype.name(),
            info.bytes.len()
        );
    }
    if let Some(t) = template {
        crate::outln!("chat template:\n{t}");
    }
    // Everything shown; now say whether the model can run (every tensor checked against the
    // hyperparameters, as a load would).
    config?;
    let backend = suanli_cpu::CpuBackend::new(Some(1)).map_err(anyhow::Error::msg)?;
    suanli_models::Model::load(&src, &backend)?;
    crate::load::tokenizer_for(&src)?;
    Ok(())
}
