//! Llama 2/3, SmolLM2, TinyLlama, Mistral (`LlamaForCausalLM`, `MistralForCausalLM`, GGUF
//! `llama`; Mistral's sliding window is a per-layer attention kind in the config).
//! No biases. HF checkpoints use NeoX rotary; GGUF files have their Q/K rows permuted by the
//! converter so adjacent pairs rotate (`RopeStyle::Interleaved`, chosen in `config.rs`).

use crate::layers::{ArchSpec, Norms};

pub(crate) const SPEC: ArchSpec = ArchSpec {
    qkv_bias: false,
    qk_norm: false,
    fused_gate_up: false,
    norms: Norms::PLAIN,
    hf_norm_offset: false,
};
