//! Qwen3-MoE (`Qwen3MoeForCausalLM`, GGUF `qwen3moe`; Qwen3-30B-A3B, Qwen3-235B-A22B): Qwen3's
//! attention (per-head Q/K norms, no biases); each sparse layer routes a token to its top-k of
//! the experts by the softmax of a linear router, the kept shares renormalised to sum to one.
//! No shared expert.

pub(crate) const SPEC: crate::layers::ArchSpec = crate::qwen3::SPEC;
