#!/usr/bin/env python3
"""The exact computation of a real GGUF file's quantized weights, from transformers: it loads the
file (with `gguf`), dequantizes every weight to f32 and computes with f32 activations. Scores the
same perplexity chunks as llama.cpp (the token ids in tests/fixtures/llamacpp/<NAME>.json, from
scripts/gen_llamacpp_refs.py) and writes each scored token's log-probability, with llama.cpp's
mean |difference| from them, to tests/fixtures/transformers/<NAME>.json.

    python3 -m venv /tmp/g && /tmp/g/bin/pip install torch transformers gguf accelerate numpy
    /tmp/g/bin/python scripts/gen_transformers_refs.py NAME PATH.gguf
"""
import importlib.metadata
import json
import pathlib
import sys

import numpy as np
import torch
from transformers import AutoModelForCausalLM

ROOT = pathlib.Path(__file__).resolve().parent.parent


def main():
    name, path = sys.argv[1], pathlib.Path(sys.argv[2])
    refs = json.loads((ROOT / "tests/fixtures/llamacpp" / f"{name}.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    ctx = refs["ctx"]
    first = ctx // 2
    lp = []
    for chunk in refs["perplexity_tokens"]:
        with torch.no_grad():
            logits = model(torch.tensor([chunk])).logits[0].double()
        logp = torch.log_softmax(logits, dim=-1)
        for pos in range(first, ctx - 1):
            lp.append(round(float(logp[pos, chunk[pos + 1]]), 5))
    llama = np.array(refs["logprobs"]["default"])
    out = {
        "model": name,
        "versions": {k: importlib.metadata.version(k) for k in ["torch", "transformers", "gguf"]},
        "logprobs": lp,
        "llamacpp_mean_abs_diff": float(np.mean(np.abs(llama - np.array(lp)))),
    }
    dest = ROOT / "tests/fixtures/transformers" / f"{name}.json"
    dest.parent.mkdir(exist_ok=True)
    dest.write_text(json.dumps(out, indent=0))
    print(f"{name}: llama.cpp's mean |d logprob| from transformers {out['llamacpp_mean_abs_diff']:.4f}; wrote {dest}")


if __name__ == "__main__":
    main()
