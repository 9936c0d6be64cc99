#!/usr/bin/env python3
"""Convert the tiny golden models (tests/fixtures/tiny/<arch>/, from gen_golden.py) to GGUF the way
llama.cpp's converter does, so that the GGUF path of every architecture is tested against the
same transformers outputs: tensor names, Llama's Q/K row permutation, GLM-4's fused gate/up and
sandwich norms, experts stacked per projection, and the GGUF byte-level BPE vocabulary. F32 tensors, so logits stay comparable.

    /tmp/g/bin/pip install gguf numpy safetensors && /tmp/g/bin/python scripts/gen_tiny_gguf.py
"""
import json
import pathlib

import gguf
import numpy as np
from safetensors.numpy import load_file

ROOT = pathlib.Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "fixtures" / "tiny"

LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.gate_up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "post_self_attn_layernorm": "post_attention_norm",
    "post_mlp_layernorm": "post_ffw_norm",
    # Mixture of experts (the experts themselves are stacked, below).
    "mlp.gate": "ffn_gate_inp",
    "mlp.shared_expert_gate": "ffn_gate_inp_shexp",
    "mlp.shared_expert.gate_proj": "ffn_gate_shexp",
    "mlp.shared_expert.up_proj": "ffn_up_shexp",
    "mlp.shared_expert.down_proj": "ffn_down_shexp",
}


def permute(w, n_head):
    """llama.cpp's Llama Q/K permutation: NeoX halves → interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# Gemma's four norms per layer (its post_attention_layernorm follows attention, not precedes the MLP).
GEMMA_NAMES = {
    "post_attention_layernorm": "post_attention_norm",
    "pre_feedforward_layernorm": "ffn_norm",
    "post_feedforward_layernorm": "post_ffw_norm",
}


def gguf_name(hf, arch=None):
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    if hf == "lm_head.weight":
        return "output.weight"
    parts = hf.split(".")
    layer, rest, suffix = parts[2], ".".join(parts[3:-1]), parts[-1]
    if arch == "gemma3" and rest in GEMMA_NAMES:
        return f"blk.{layer}.{GEMMA_NAMES[rest]}.{suffix}"
    return f"blk.{layer}.{LAYER_NAMES[rest]}.{suffix}"


# Fixture directory → GGUF architecture, as llama.cpp's converter names them.
GGUF_ARCH = {"llama3_rope": "llama", "qwen2_yarn": "qwen2", "mistral_swa": "llama",
             "qwen2_moe": "qwen2moe", "qwen3_moe": "qwen3moe"}


def llama3_rope_freqs(rope, head_dim):
    """llama.cpp's converter writes Llama 3.1 scaling as rope_freqs.weight: a divisor per frequency."""
    base, factor = rope["rope_theta"], rope["factor"]
    low, high, old = rope["low_freq_factor"], rope["high_freq_factor"], rope["original_max_position_embeddings"]
    freqs = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    out = []
    for f in freqs:
        wavelen = 2 * np.pi / f
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def convert(name):
    d = TINY / name
    arch = GGUF_ARCH.get(name, name)
    cfg = json.loads((d / "config.json").read_text())
    tok = json.loads((d / "tokenizer.json").read_text())
    tcfg = json.loads((d / "tokenizer_config.json").read_text())
    template = (d / "chat_template.jinja").read_text() if (d / "chat_template.jinja").exists() else tcfg["chat_template"]
    rope = cfg.get("rope_parameters") or {}
    if arch == "gemma3":
        # Per layer type; the GGUF keys describe the global layers (local ones: base 10000).
        assert rope["sliding_attention"]["rope_theta"] == 10000.0
        assert cfg["query_pre_attn_scalar"] == (cfg.get("head_dim") or 0)
        rope = rope["full_attention"]
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads

    w = gguf.GGUFWriter(str(d / "model.gguf"), arch)
    w.add_uint32(f"{arch}.context_length", cfg["max_position_embeddings"])
    w.add_uint32(f"{arch}.embedding_length", cfg["hidden_size"])
    w.add_uint32(f"{arch}.feed_forward_length", cfg["intermediate_size"])
    w.add_uint32(f"{arch}.block_count", cfg["num_hidden_layers"])
    w.add_uint32(f"{arch}.attention.head_count", heads)
    w.add_uint32(f"{arch}.attention.head_count_kv", kv_heads)
    w.add_uint32(f"{arch}.attention.key_length", head_dim)
    w.add_uint32(f"{arch}.attention.value_length", head_dim)
    w.add_uint32(f"{arch}.rope.dimension_count", int(head_dim * rope.get("partial_rotary_factor", 1.0)))
    w.add_float32(f"{arch}.rope.freq_base", float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))))
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", cfg["rms_norm_eps"])
    if rope.get("rope_type") == "linear":
        w.add_string(f"{arch}.rope.scaling.type", "linear")
        w.add_float32(f"{arch}.rope.scaling.factor", rope["factor"])
    if rope.get("rope_type") == "yarn":
        w.add_string(f"{arch}.rope.scaling.type", "yarn")
        w.add_float32(f"{arch}.rope.scaling.factor", rope["factor"])
        w.add_uint32(f"{arch}.rope.scaling.original_context_length", rope["original_max_position_embeddings"])
    if rope.get("rope_type") == "llama3":
        w.add_tensor("rope_freqs.weight", llama3_rope_freqs(rope, head_dim))
    n_experts = cfg.get("num_experts") or cfg.get("num_local_experts")
    if n_experts:
        w.add_uint32(f"{arch}.expert_count", n_experts)
        w.add_uint32(f"{arch}.expert_used_count", cfg["num_experts_per_tok"])
        w.add_uint32(f"{arch}.expert_feed_forward_length", cfg["moe_intermediate_size"])
        if "shared_expert_intermediate_size" in cfg:
            w.add_uint32(f"{arch}.expert_shared_feed_forward_length", cfg["shared_expert_intermediate_size"])
    if cfg.get("sliding_window") and (arch == "gemma3" or not cfg.get("layer_types")) \
            and not cfg.get("use_sliding_window") is False:
        w.add_uint32(f"{arch}.attention.sliding_window", cfg["sliding_window"])

    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    special = {t["id"] for t in tok["added_tokens"] if t["special"]}
    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_string("tokenizer.ggml.pre", "gpt-2")
    w.add_array("tokenizer.ggml.tokens", [t for t, _ in vocab])
    w.add_array("tokenizer.ggml.token_type", [3 if i in special else 1 for _, i in vocab])
    w.add_array("tokenizer.ggml.merges", [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]])
    w.add_uint32("tokenizer.ggml.bos_token_id", 0)
    w.add_uint32("tokenizer.ggml.eos_token_id", 2)
    w.add_bool("tokenizer.ggml.add_bos_token", False)
    w.add_string("tokenizer.chat_template", template)

    tensors = load_file(str(d / "model.safetensors"))
    # llama.cpp's converter stacks each projection's experts into one [experts, rows, cols]
    # tensor per layer.
    experts = {}
    for hf in list(tensors):
        parts = hf.split(".")
        if len(parts) == 8 and parts[3:5] == ["mlp", "experts"]:
            layer, e, proj = parts[2], int(parts[5]), parts[6]
            experts.setdefault((layer, proj), {})[e] = tensors.pop(hf)
    for (layer, proj), by_e in sorted(experts.items()):
        stacked = np.stack([by_e[e] for e in range(len(by_e))]).astype(np.float32)
        w.add_tensor(f"blk.{layer}.ffn_{proj.split('_')[0]}_exps.weight", stacked)
    for hf, t in tensors.items():
        t = t.astype(np.float32)
        if hf.endswith("shared_expert_gate.weight"):
            t = t.reshape(-1)  # llama.cpp's shape: a vector of the hidden size
        if arch == "llama" and hf.endswith("self_attn.q_proj.weight"):
            t = permute(t, heads)
        if arch == "llama" and hf.endswith("self_attn.k_proj.weight"):
            t = permute(t, kv_heads)
        if arch == "gemma3" and hf.endswith("norm.weight"):
            t = t + 1.0  # llama.cpp stores Gemma's (1 + w) norm weights shifted
        w.add_tensor(gguf_name(hf, arch), t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(name, "->", d / "model.gguf")


if __name__ == "__main__":
    import sys
    for a in sys.argv[1:] or ["qwen2", "llama", "qwen3", "glm4", "llama3_rope", "qwen2_yarn", "mistral_swa", "gemma3",
                              "qwen2_moe", "qwen3_moe"]:
        convert(a)
