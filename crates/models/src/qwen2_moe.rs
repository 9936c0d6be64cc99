//! Qwen1.5-MoE / Qwen2-MoE (`Qwen2MoeForCausalLM`, GGUF `qwen2moe`): Qwen2's attention (Q/K/V
//! biases, NeoX rotary); each sparse layer routes a token to its top-k experts by the softmax of
//! a linear router, keeps their shares as they are (`norm_topk_prob` false in the released
//! models), and adds a shared expert scaled by sigmoid(x · shared_expert_gate).

pub(crate) const SPEC: crate::layers::ArchSpec = crate::qwen2::SPEC;
