#!/usr/bin/env python3
"""Reference outputs from llama.cpp (through llama-cpp-python) for the real catalog models:
tokenization, greedy continuations, perplexity, per-token log-probabilities (with llama.cpp's own
noise: the same run with flash attention on, and with an F32 KV cache), and llama.cpp's decode
speed.

    python3 -m venv .venv-llama
    CMAKE_ARGS="-DGGML_NATIVE=ON" .venv-llama/bin/pip install llama-cpp-python numpy
    .venv-llama/bin/python scripts/gen_llamacpp_refs.py MODEL_NAME PATH.gguf

Writes tests/fixtures/llamacpp/<MODEL_NAME>.json. N_CHUNKS (environment, default 4) sets how
many perplexity chunks are scored (2 for the 1.5B model, to keep CI short). Perplexity follows llama-perplexity: chunks of
CTX tokens (first token replaced by BOS where the model adds one), scoring positions
CTX/2 .. CTX-2, each predicting the next token.
"""
import importlib.metadata
import json
import pathlib
import sys
import time

import numpy as np
from llama_cpp import Llama

ROOT = pathlib.Path(__file__).resolve().parent.parent
CTX = 256
N_CHUNKS = int(__import__("os").environ.get("N_CHUNKS", "4"))
THREADS = 2

TOKENIZE_TEXTS = [
    "Hello, world! How are you doing today?",
    "请用一句话介绍你自己。",
    "人工智能的发展离不开数据、算法和算力。",
    "Le café était très bon, n'est-ce pas ? Ça coûte 3,50 €.",
    "Emoji test: 😀🎉👍🏽 and flags 🇨🇳🇫🇷, plus ❤️‍🔥.",
    "def add(a, b):\n    return a + b\n\n\nprint(add(2, 3))",
    "   leading spaces, \t tabs,\n\n\nnewlines   and    runs      of spaces   ",
    "Numbers: 1234567890, 3.14159, -42, 1e-9, 2024-11-28.",
    "<|im_start|>user\nhi<|im_end|> special strings as text",
    "MixedCASE wordsWithCamelCase and snake_case_names; URLs like https://example.com/a?b=c&d=e",
    "日本語のテキストも少し。한국어도 조금.",
    "It's we're they'll I'd you've she's 'quoted' “curly”",
]

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n",
    "中国的首都是",
    "Once upon a time, there was a little",
    "La recette de la crêpe :",
    "1, 2, 3, 4, 5,",
    "The three primary colors are",
    "人工智能是",
]
N_GEN = 16


def perplexity(llm, tokens, bos, logprobs=None):
    """llama-perplexity's number; `logprobs` (a list) receives each scored token's ln p."""
    n_vocab = llm.n_vocab()
    first = CTX // 2
    nll, count = 0.0, 0
    n_chunks = min(N_CHUNKS, len(tokens) // CTX)
    for c in range(n_chunks):
        chunk = list(tokens[c * CTX:(c + 1) * CTX])
        if bos is not None:
            chunk[0] = bos
        llm.reset()
        llm.eval(chunk)
        logits = np.array(llm.scores[:CTX], dtype=np.float64).reshape(CTX, n_vocab)
        for pos in range(first, CTX - 1):
            row = logits[pos]
            m = row.max()
            lse = m + np.log(np.exp(row - m).sum())
            nll += lse - row[tokens[c * CTX + pos + 1]]
            if logprobs is not None:
                logprobs.append(round(float(row[tokens[c * CTX + pos + 1]] - lse), 5))
            count += 1
    return float(np.exp(nll / count)), n_chunks, count


def variant_logprobs(path, tokens, bos, **kw):
    """The scored tokens' log-probabilities from llama.cpp configured otherwise (its noise)."""
    llm = Llama(model_path=path, n_ctx=CTX, n_threads=THREADS, n_batch=CTX, logits_all=True, verbose=False, **kw)
    out = []
    perplexity(llm, tokens, bos, out)
    return out


def q8_kv_perplexity(path, tokens, bos):
    """The same perplexity with llama.cpp's Q8_0 K and V cache (which needs flash attention)."""
    q8 = Llama(model_path=path, n_ctx=CTX, n_threads=THREADS, n_batch=CTX, logits_all=True,
               type_k=8, type_v=8, flash_attn=True, verbose=False)  # 8 = GGML_TYPE_Q8_0
    return perplexity(q8, tokens, bos)[0]


def main():
    name, path = sys.argv[1], sys.argv[2]
    llm = Llama(model_path=path, n_ctx=CTX, n_threads=THREADS, n_batch=CTX, logits_all=True, verbose=False)
    add_bos = llm._model.add_bos_token() if hasattr(llm._model, "add_bos_token") else False
    bos = llm.token_bos() if add_bos else None
    out = {"model": name, "llama_cpp_python": importlib.metadata.version("llama-cpp-python"),
           "ctx": CTX, "threads": THREADS, "add_bos": bool(add_bos)}
    out["tokenize"] = [{"text": t, "ids": llm.tokenize(t.encode(), add_bos=False, special=False)} for t in TOKENIZE_TEXTS]
    text = (ROOT / "tests/fixtures/text/multilingual.txt").read_text()
    tokens = llm.tokenize(text.encode(), add_bos=False, special=False)
    out["text_tokens"] = len(tokens)
    lp = []
    ppl, n_chunks, n_scored = perplexity(llm, tokens, bos, lp)
    out["perplexity"] = {"file": "tests/fixtures/text/multilingual.txt", "ctx": CTX, "value": ppl,
                         "n_chunks": n_chunks, "n_scored": n_scored}
    # The tokens of the scored chunks (BOS in place where the model adds one), so that other
    # references (scripts/gen_transformers_refs.py) score exactly the same thing.
    out["perplexity_tokens"] = [([bos] if bos is not None else [tokens[c * CTX]]) + tokens[c * CTX + 1:(c + 1) * CTX]
                                for c in range(n_chunks)]
    fa = variant_logprobs(path, tokens, bos, flash_attn=True)
    kv32 = variant_logprobs(path, tokens, bos, type_k=0, type_v=0)  # 0 = GGML_TYPE_F32
    out["logprobs"] = {"default": lp, "flash_attn": fa, "kv_f32": kv32}
    noise = {k: float(np.mean(np.abs(np.array(v) - np.array(lp)))) for k, v in [("flash_attn", fa), ("kv_f32", kv32)]}
    out["logprob_noise"] = noise
    print(f"{name}: llama.cpp against itself, mean |d logprob|: {noise}")
    out["perplexity_q8_0_kv"] = q8_kv_perplexity(path, tokens, bos)
    gens = []
    for p in PROMPTS:
        ids = llm.tokenize(p.encode(), add_bos=bool(add_bos), special=False)
        llm.reset()
        llm.eval(ids)
        gen, top = [], []
        for _ in range(N_GEN):
            logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
            t = int(np.argmax(logits))
            if llm.token_eos() == t:
                break
            gen.append(t)
            # The top candidates at each step, so tests can tell a near-tie from an error.
            best = np.argsort(-logits)[:5]
            top.append([[int(i), round(float(logits[i]), 4)] for i in best])
            llm.eval([t])
        gens.append({"prompt": p, "prompt_ids": ids, "greedy": gen, "top5": top})
    out["greedy"] = gens
    # llama.cpp decode speed for the closing note (not used by tests).
    fast = Llama(model_path=path, n_ctx=512, n_threads=THREADS, verbose=False)
    t0 = time.time()
    r = fast.create_completion("The history of computing", max_tokens=64, temperature=0.0)
    dt = time.time() - t0
    out["llamacpp_decode_tok_s_incl_prefill"] = r["usage"]["completion_tokens"] / dt
    dest = ROOT / "tests/fixtures/llamacpp" / f"{name}.json"
    dest.write_text(json.dumps(out, ensure_ascii=False, indent=1))
    print(f"{name}: ppl {ppl:.4f} over {n_chunks} chunks; wrote {dest}")


if __name__ == "__main__":
    main()
