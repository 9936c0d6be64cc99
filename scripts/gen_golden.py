#!/usr/bin/env python3
"""Golden outputs from Hugging Face transformers for tiny random models of each architecture.

    python3 -m venv /tmp/g && /tmp/g/bin/pip install torch transformers safetensors numpy
    /tmp/g/bin/python scripts/gen_golden.py

For each of qwen2, llama, qwen3, glm4, gemma3, qwen2_moe and qwen3_moe — and for the position-handling variants llama3_rope
(Llama 3.1 frequency scaling), qwen2_yarn (YaRN with its attention factor) and mistral_swa (a
sliding window shorter than the test sequences) — this writes tests/fixtures/tiny/<arch>/ with a Hugging
Face layout (config.json, model.safetensors in F32, tokenizer.json, tokenizer_config.json with a
chat template) and golden.json: logits at every position of a fixed sequence, a greedy
continuation, perplexity by the llama-perplexity method, tokenizations and rendered chat
templates. Weights are scaled up from the default init so logits are peaked, and norm weights
and biases are non-trivial, so that a missing bias or a wrong rotary shows.
"""
import importlib.metadata
import json
import pathlib

import numpy as np
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
import sys

from transformers import Qwen2Config, LlamaConfig, Qwen3Config, Glm4Config, MistralConfig, Gemma3TextConfig
from transformers import Qwen2MoeConfig, Qwen3MoeConfig

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "tiny"
SEED = 1234
QWEN_TEMPLATE = (ROOT / "tests/fixtures/templates/qwen2.5.jinja").read_text()
SMOL_TEMPLATE = (ROOT / "tests/fixtures/templates/smollm2.jinja").read_text()
# The template suanli falls back on for Gemma 3 files that carry none (llama.cpp's GGUFs of it).
GEMMA_TEMPLATE = (ROOT / "crates/tokenizer/templates/gemma3.jinja").read_text()
CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "请用一句话介绍你自己。"}],
    [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}, {"role": "user", "content": "  and 3+3?  "}],
]
TEXTS = ["Hello world, this is a test.", "人工智能的发展离不开算力。", "  spaces\n\nand code: x = f(1)  "]


def train_tokenizer():
    text = (ROOT / "tests/fixtures/text/multilingual.txt").read_text()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([text] * 4, trainer)
    return tok


def configs(vocab):
    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  rms_norm_eps=1e-5, bos_token_id=0, eos_token_id=2, pad_token_id=0)
    return {
        "qwen2": (Qwen2Config(**common, rope_theta=10000.0, tie_word_embeddings=True), QWEN_TEMPLATE),
        "llama": (LlamaConfig(**common, rope_theta=10000.0, tie_word_embeddings=False), SMOL_TEMPLATE),
        "qwen3": (Qwen3Config(**common, head_dim=32, rope_theta=1000000.0, tie_word_embeddings=False), QWEN_TEMPLATE),
        "glm4": (Glm4Config(**common, head_dim=16, partial_rotary_factor=0.5, rope_theta=10000.0,
                            attention_bias=True, tie_word_embeddings=False), SMOL_TEMPLATE),
        # Scaled so that the short test sequences already rotate differently from plain RoPE.
        "llama3_rope": (LlamaConfig(**common, tie_word_embeddings=False, rope_parameters={
            "rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}), SMOL_TEMPLATE),
        "qwen2_yarn": (Qwen2Config(**common, tie_word_embeddings=True, rope_parameters={
            "rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
            "original_max_position_embeddings": 128}), QWEN_TEMPLATE),
        "mistral_swa": (MistralConfig(**common, rope_theta=10000.0, sliding_window=7,
                                      tie_word_embeddings=False), SMOL_TEMPLATE),
        # Gemma 3: five sliding-window layers (local rotary base) then a global one (scaled
        # rotary), GeGLU, four norms per layer, Q/K norms, embeddings scaled by √hidden.
        "gemma3": (Gemma3TextConfig(**{**common, "num_hidden_layers": 6, "rms_norm_eps": 1e-6}, head_dim=16,
                                    sliding_window=7, query_pre_attn_scalar=16, tie_word_embeddings=True,
                                    rope_parameters={
                                        "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6},
                                        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}),
                   GEMMA_TEMPLATE),
        # Mixture of experts: 8 experts, the top 3 kept as softmax shares, a gated shared expert,
        # and a dense middle layer (mlp_only_layers).
        "qwen2_moe": (Qwen2MoeConfig(**{**common, "num_hidden_layers": 3}, rope_theta=10000.0,
                                     tie_word_embeddings=False, num_experts=8, num_experts_per_tok=3,
                                     moe_intermediate_size=32, shared_expert_intermediate_size=48,
                                     norm_topk_prob=False, mlp_only_layers=[1]), QWEN_TEMPLATE),
        # The top 2 of 8 experts, renormalised; no shared expert.
        "qwen3_moe": (Qwen3MoeConfig(**common, head_dim=32, rope_theta=1000000.0, tie_word_embeddings=False,
                                     num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                                     norm_topk_prob=True), QWEN_TEMPLATE),
    }


def randomize(model, gen):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and "norm" in name:
                p.copy_(1.0 + 0.3 * (2 * torch.rand(p.shape, generator=gen) - 1))
            elif p.dim() == 1:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
            else:
                # By the input width (the last dimension; experts are stacked 3-D tensors).
                p.copy_(torch.randn(p.shape, generator=gen) * (1.5 / p.shape[-1] ** 0.5))
        if hasattr(model, "lm_head") and not model.config.tie_word_embeddings:
            model.lm_head.weight.mul_(3.0)


def ppl_llama_method(model, ids, ctx):
    nll, n = 0.0, 0
    for c in range(len(ids) // ctx):
        chunk = ids[c * ctx:(c + 1) * ctx]
        with torch.no_grad():
            logits = model(torch.tensor([chunk])).logits[0].double()
        logp = torch.log_softmax(logits, dim=-1)
        for pos in range(ctx // 2, ctx - 1):
            nll -= logp[pos, ids[c * ctx + pos + 1]].item()
            n += 1
    return float(np.exp(nll / n)), len(ids) // ctx, n


def main():
    torch.manual_seed(SEED)
    tok = train_tokenizer()
    vocab = tok.get_vocab_size()
    only = set(sys.argv[1:])
    for arch, (cfg, template) in configs(vocab).items():
        if only and arch not in only:
            continue
        d = OUT / arch
        d.mkdir(parents=True, exist_ok=True)
        gen = torch.Generator().manual_seed(SEED + len(arch))
        model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.float32).eval()
        randomize(model, gen)
        model.save_pretrained(d, safe_serialization=True)
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|im_end|>",
                                       unk_token=None, pad_token="<|endoftext|>")
        fast.chat_template = template
        fast.save_pretrained(d)
        rng = np.random.default_rng(SEED)
        ids = [int(x) for x in rng.integers(3, vocab, size=24)]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].float().numpy()
        (d / "logits.f32").write_bytes(logits.astype("<f4").tobytes())
        prompt = ids[:8]
        out = model.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False, min_new_tokens=16,
                             pad_token_id=0, eos_token_id=None)
        greedy = [int(x) for x in out[0][len(prompt):]]
        ppl_ids = [int(x) for x in rng.integers(3, vocab, size=96)]
        ppl, n_chunks, n_scored = ppl_llama_method(model, ppl_ids, 32)
        golden = {
            "arch": arch, "seed": SEED,
            "versions": {k: importlib.metadata.version(k) for k in ["torch", "transformers", "tokenizers", "numpy"]},
            "ids": ids, "logits_file": "logits.f32", "vocab": vocab,
            "greedy": {"prompt": prompt, "tokens": greedy},
            "perplexity": {"ids": ppl_ids, "ctx": 32, "value": ppl, "n_chunks": n_chunks, "n_scored": n_scored},
            "tokenize": [{"text": t, "ids": fast.encode(t, add_special_tokens=False)} for t in TEXTS],
            "chat": [{"messages": m, "rendered": fast.apply_chat_template(m, tokenize=False, add_generation_prompt=True)}
                     for m in CONVERSATIONS],
        }
        (d / "golden.json").write_text(json.dumps(golden, ensure_ascii=False, indent=1))
        print(arch, "ppl", ppl, "greedy", greedy[:8])


if __name__ == "__main__":
    main()
