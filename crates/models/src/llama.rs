//! Llama 2/3, SmolLM2, TinyLlama, Mistral without sliding window (`LlamaForCausalLM`, GGUF `llama`).
//! No biases. HF checkpoints use NeoX rotary; GGUF files have their Q/K rows permuted by the
//! converter so adjacent pairs rotate (`RopeStyle::Interleaved`, chosen in `config.rs`).

use crate::layers::ArchSpec;

pub(crate) const SPEC: ArchSpec = ArchSpec {
    qkv_bias: false,
    qk_norm: false,
    sandwich_norms: false,
    fused_gate_up: false,
};
