//! Qwen2 / Qwen2.5 / DeepSeek-R1-Distill-Qwen (`Qwen2ForCausalLM`, GGUF `qwen2`):
//! the Llama block with biases on the Q, K and V projections; NeoX rotary; small models tie the
//! output head to the embeddings.

use crate::layers::{ArchSpec, Norms};

pub(crate) const SPEC: ArchSpec = ArchSpec {
    qkv_bias: true,
    qk_norm: false,
    fused_gate_up: false,
    norms: Norms::PLAIN,
    hf_norm_offset: false,
};
