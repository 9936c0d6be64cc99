//! Qwen3 (`Qwen3ForCausalLM`, GGUF `qwen3`): no Q/K/V biases, but an RMSNorm over each head of
//! Q and K (`q_norm`, `k_norm`) before the rotary embedding; head_dim set explicitly.

use crate::layers::{ArchSpec, Norms};

pub(crate) const SPEC: ArchSpec = ArchSpec {
    qkv_bias: false,
    qk_norm: true,
    fused_gate_up: false,
    norms: Norms::PLAIN,
    hf_norm_offset: false,
};
