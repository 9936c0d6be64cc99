//! GLM-4-0414 (`Glm4ForCausalLM`, GGUF `glm4`) from Zhipu AI: Q/K/V biases, a norm after the
//! attention output and after the MLP output (before each residual add), a fused `gate_up_proj`
//! (gate first), and rotary over the first half of each head with adjacent pairs rotating.

use crate::layers::{ArchSpec, Norms};

pub(crate) const SPEC: ArchSpec = ArchSpec {
    qkv_bias: true,
    qk_norm: false,
    fused_gate_up: true,
    norms: Norms {
        mlp_input: "post_attention_layernorm",
        attn_output: Some("post_self_attn_layernorm"),
        mlp_output: Some("post_mlp_layernorm"),
    },
    hf_norm_offset: false,
};
