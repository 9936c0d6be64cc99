#!/usr/bin/env python3
"""A GGUF file with the shape of Qwen3-30B-A3B (qwen3moe: 48 layers, 128 experts of width 768, 8
used per token) and random Q4_K weights, so that suanli and llama.cpp can be timed on the same
mixture-of-experts file where the real weights cannot travel (17.3 GB):

    /tmp/g/bin/pip install gguf numpy
    /tmp/g/bin/python bench/random_moe_gguf.py /tmp/qwen3-30b-a3b-random-q4_k.gguf \
        ~/.cache/suanli/models/qwen2.5-coder-0.5b-instruct.gguf   # tokenizer source

Matrices are Q4_K (the router and norms F32, as llama.cpp's quantizer keeps them); the
tokenizer is copied from a Qwen2.5 GGUF (the same 151,936-token vocabulary). Every tensor has
its own bytes in the file (a repeated random pattern), so decode reads what a real file would.
"""
import sys

import gguf
import numpy as np

HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM = 2048, 48, 32, 4, 128
EXPERTS, USED, EXPERT_FF, VOCAB = 128, 8, 768, 151936
Q4K = gguf.GGMLQuantizationType.Q4_K
BLOCK_BYTES = 144  # per 256 values


def q4k(rows, cols, rng):
    """Random Q4_K rows: small positive f16 scales (weights of order 0.02), random 6-bit
    sub-scales and 4-bit quants."""
    nb = rows * (cols // 256)
    blocks = rng.integers(0, 256, size=(nb, BLOCK_BYTES), dtype=np.uint8)
    d = np.full(nb, 1e-4, dtype=np.float16).view(np.uint8).reshape(nb, 2)
    blocks[:, 0:2] = d  # d
    blocks[:, 2:4] = d  # dmin
    return blocks.reshape(rows, cols // 256 * BLOCK_BYTES)


def main():
    out, tok_src = sys.argv[1], sys.argv[2]
    rng = np.random.default_rng(1)
    arch = "qwen3moe"
    w = gguf.GGUFWriter(out, arch)
    for k, v in [("context_length", 40960), ("embedding_length", HIDDEN), ("feed_forward_length", 6144),
                 ("block_count", LAYERS), ("attention.head_count", HEADS), ("attention.head_count_kv", KV_HEADS),
                 ("attention.key_length", HEAD_DIM), ("attention.value_length", HEAD_DIM),
                 ("expert_count", EXPERTS), ("expert_used_count", USED),
                 ("expert_feed_forward_length", EXPERT_FF)]:
        w.add_uint32(f"{arch}.{k}", v)
    w.add_float32(f"{arch}.rope.freq_base", 1e6)
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)
    src = gguf.GGUFReader(tok_src)
    for k, f in src.fields.items():
        if not k.startswith("tokenizer."):
            continue
        if k == "tokenizer.chat_template":
            continue
        t = f.types[0]
        if t == gguf.GGUFValueType.ARRAY:
            sub = f.types[1]
            vals = [f.parts[i] for i in f.data]
            if sub == gguf.GGUFValueType.STRING:
                w.add_array(k, [bytes(v).decode("utf-8") for v in vals])
            else:
                w.add_array(k, [int(v[0]) for v in vals])
        elif t == gguf.GGUFValueType.STRING:
            w.add_string(k, bytes(f.parts[f.data[0]]).decode("utf-8"))
        elif t == gguf.GGUFValueType.BOOL:
            w.add_bool(k, bool(f.parts[f.data[0]][0]))
        else:
            w.add_uint32(k, int(f.parts[f.data[0]][0]))

    ones = np.ones(HIDDEN, dtype=np.float32)
    head_ones = np.ones(HEAD_DIM, dtype=np.float32)
    q = q4k(HEADS * HEAD_DIM, HIDDEN, rng)
    kv = q4k(KV_HEADS * HEAD_DIM, HIDDEN, rng)
    o = q4k(HIDDEN, HEADS * HEAD_DIM, rng)
    router = (rng.standard_normal((EXPERTS, HIDDEN)) * 0.02).astype(np.float32)
    up = q4k(EXPERTS * EXPERT_FF, HIDDEN, rng).reshape(EXPERTS, EXPERT_FF, -1)
    down = q4k(EXPERTS * HIDDEN, EXPERT_FF, rng).reshape(EXPERTS, HIDDEN, -1)
    raw = lambda name, a: w.add_tensor(name, a, raw_dtype=Q4K)
    raw("token_embd.weight", q4k(VOCAB, HIDDEN, rng))
    raw("output.weight", q4k(VOCAB, HIDDEN, rng))
    w.add_tensor("output_norm.weight", ones)
    for i in range(LAYERS):
        p = f"blk.{i}"
        w.add_tensor(f"{p}.attn_norm.weight", ones)
        w.add_tensor(f"{p}.ffn_norm.weight", ones)
        w.add_tensor(f"{p}.attn_q_norm.weight", head_ones)
        w.add_tensor(f"{p}.attn_k_norm.weight", head_ones)
        raw(f"{p}.attn_q.weight", q)
        raw(f"{p}.attn_k.weight", kv)
        raw(f"{p}.attn_v.weight", kv)
        raw(f"{p}.attn_output.weight", o)
        w.add_tensor(f"{p}.ffn_gate_inp.weight", router)
        raw(f"{p}.ffn_gate_exps.weight", up)
        raw(f"{p}.ffn_up_exps.weight", up)
        raw(f"{p}.ffn_down_exps.weight", down)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=True)
    w.close()


if __name__ == "__main__":
    main()
