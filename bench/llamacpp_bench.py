#!/usr/bin/env python3
"""llama.cpp's prefill and decode throughput through llama-cpp-python, measured the way
`suanli bench` measures (random token ids, prefill of PP tokens in one batch, then TG single-token
decode steps), median over repetitions. Prints one JSON object.

    python llamacpp_bench.py MODEL.gguf THREADS PP TG REPS [DEPTH]
"""
import json
import random
import statistics
import sys
import time

from llama_cpp import Llama


def main():
    path, threads, pp, tg, reps = sys.argv[1], *map(int, sys.argv[2:6])
    depth = int(sys.argv[6]) if len(sys.argv) > 6 else 0
    llm = Llama(model_path=path, n_ctx=depth + max(pp, tg) + 16, n_threads=threads, n_threads_batch=threads,
                n_batch=max(pp, 512), n_ubatch=max(pp, 512), verbose=False)
    rng = random.Random(0)
    vocab = llm.n_vocab()
    toks = lambda n: [rng.randrange(vocab) for _ in range(n)]
    llm.eval(toks(8))  # warm-up
    pps, tgs = [], []
    for _ in range(reps):
        if pp:
            llm.reset()
            if depth:
                llm.eval(toks(depth))
            p = toks(pp)
            t0 = time.perf_counter()
            llm.eval(p)
            pps.append(pp / (time.perf_counter() - t0))
        if tg:
            llm.reset()
            if depth:
                llm.eval(toks(depth))
            g = toks(tg)
            t0 = time.perf_counter()
            for t in g:
                llm.eval([t])
            tgs.append(tg / (time.perf_counter() - t0))
    print(json.dumps({"prefill_tok_s": statistics.median(pps) if pps else None,
                      "decode_tok_s": statistics.median(tgs) if tgs else None}))


if __name__ == "__main__":
    main()
