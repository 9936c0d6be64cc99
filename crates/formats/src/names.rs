//! GGUF tensor names → Hugging Face names, so the model code speaks one vocabulary.

/// Map a GGUF tensor name (`blk.3.attn_q.weight`) to its HF name
/// (`model.layers.3.self_attn.q_proj.weight`). Unknown names map to `None`.
pub fn gguf_to_hf(name: &str) -> Option<String> {
    let (stem, suffix) = name.rsplit_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    let global = match stem {
        "token_embd" => Some("model.embed_tokens"),
        "output_norm" => Some("model.norm"),
        "output" => Some("lm_head"),
        // Llama 3.1 frequency factors: no HF tensor (config.json says it); read by the config.
        "rope_freqs" => Some("rope_freqs"),
        _ => None,
    };
    if let Some(g) = global {
        return Some(format!("{g}.{suffix}"));
    }
    let rest = stem.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let hf = match part {
        "attn_norm" => "input_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_qkv" => "self_attn.qkv_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        // GLM-4: norm after attention output, before the residual add.
        "post_attention_norm" => "post_self_attn_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "post_ffw_norm" => "post_mlp_layernorm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        // Mixture of experts: the router, the experts stacked in one 3-D tensor per projection
        // ([experts, rows, cols] in HF order), the shared expert and its gate.
        "ffn_gate_inp" => "mlp.gate",
        "ffn_gate_exps" => "mlp.experts.gate_proj",
        "ffn_up_exps" => "mlp.experts.up_proj",
        "ffn_down_exps" => "mlp.experts.down_proj",
        "ffn_gate_inp_shexp" => "mlp.shared_expert_gate",
        "ffn_gate_shexp" => "mlp.shared_expert.gate_proj",
        "ffn_up_shexp" => "mlp.shared_expert.up_proj",
        "ffn_down_shexp" => "mlp.shared_expert.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{suffix}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_layer_and_global_names() {
        assert_eq!(
            gguf_to_hf("blk.12.attn_q.bias").unwrap(),
            "model.layers.12.self_attn.q_proj.bias"
        );
        assert_eq!(
            gguf_to_hf("token_embd.weight").unwrap(),
            "model.embed_tokens.weight"
        );
        assert_eq!(
            gguf_to_hf("blk.0.ffn_norm.weight").unwrap(),
            "model.layers.0.post_attention_layernorm.weight"
        );
        assert!(gguf_to_hf("blk.x.attn_q.weight").is_none());
        assert_eq!(
            gguf_to_hf("rope_freqs.weight").unwrap(),
            "rope_freqs.weight"
        );
        assert_eq!(
            gguf_to_hf("blk.0.ffn_gate_exps.weight").unwrap(),
            "model.layers.0.mlp.experts.gate_proj.weight"
        );
        assert!(gguf_to_hf("blk.0.ffn_gate_chexps.weight").is_none());
    }
}
