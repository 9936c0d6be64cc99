//! Gemma 3 (`Gemma3ForCausalLM`, GGUF `gemma3`) from Google: embeddings scaled by √hidden, a
//! GeGLU MLP (tanh GELU), four norms per layer (before and after attention, before and after the
//! MLP), an RMSNorm over each head of Q and K, and five sliding-window layers with their own
//! rotary base for every global one (the attention kinds, bases and query scale are in the
//! config). Its norms scale by (1 + w): HF checkpoints store w, llama.cpp's GGUF files 1 + w.

use crate::layers::{ArchSpec, Norms};

pub(crate) const SPEC: ArchSpec = ArchSpec {
    qkv_bias: false,
    qk_norm: true,
    fused_gate_up: false,
    norms: Norms {
        mlp_input: "pre_feedforward_layernorm",
        attn_output: Some("post_attention_layernorm"),
        mlp_output: Some("post_feedforward_layernorm"),
    },
    hf_norm_offset: true,
};
