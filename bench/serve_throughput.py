#!/usr/bin/env python3
"""Aggregate generation throughput of an OpenAI-compatible server: N greedy completions of
`--max-tokens` tokens one at a time, then all N at once (`--rounds` times, the median reported).
Prints tokens/s of both, their ratio, and whether every concurrent answer equals its
one-at-a-time answer (the fewest equal over the rounds). Standard library only.

  python3 bench/serve_throughput.py --url http://127.0.0.1:8080 --model qwen2.5-coder-0.5b
"""

import argparse
import json
import threading
import time
import urllib.request

PROMPTS = [
    "The history of the printing press begins",
    "def quicksort(items):\n    \"\"\"Sort a list.\"\"\"\n",
    "A recipe for bread: first, mix",
    "In 1969, the first humans landed on",
    "The three laws of thermodynamics are",
    "Once upon a time, in a small village by the sea,",
    "Photosynthesis is the process by which",
    "import numpy as np\n\n# compute the mean of each row\n",
    "The main causes of the French Revolution were",
    "A good password should",
    "Dear team, I am writing to let you know that",
    "The difference between TCP and UDP is",
    "Rust's ownership model means that",
    "The best way to learn a new language is",
    "Mount Everest is located",
    "SELECT name, COUNT(*) FROM orders",
]


def complete(url, model, key, prompt, max_tokens, ban):
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
    if ban:
        body["logit_bias"] = {str(t): -100 for t in ban}
    req = urllib.request.Request(
        url + "/v1/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
    )
    with urllib.request.urlopen(req, timeout=3600) as r:
        out = json.load(r)
    return out["choices"][0]["text"], out["usage"]["completion_tokens"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--key", default="none")
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--ban", default="", help="token ids to ban (end-of-generation), comma-separated")
    ap.add_argument("--label", default="")
    ap.add_argument("--rounds", type=int, default=3,
                    help="concurrent passes; the median one is reported")
    a = ap.parse_args()
    ban = [int(t) for t in a.ban.split(",") if t]
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(a.requests)]
    run = lambda p: complete(a.url, a.model, a.key, p, a.max_tokens, ban)
    run("Warm up:")

    t0 = time.perf_counter()
    alone = [run(p) for p in prompts]
    t_seq = time.perf_counter() - t0

    def concurrent():
        together = [None] * len(prompts)
        start = threading.Barrier(len(prompts) + 1)

        def worker(i):
            start.wait()
            together[i] = run(prompts[i])

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        start.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        return together, time.perf_counter() - t0

    # One concurrent pass lasts ~2 s: on a shared machine a single one is mostly noise, so
    # the median of the rounds is reported (each round's rate is listed too).
    rounds = [concurrent() for _ in range(max(1, a.rounds))]
    rates = [sum(n for _, n in tog) / t for tog, t in rounds]
    mid = sorted(range(len(rounds)), key=lambda i: rates[i])[len(rounds) // 2]
    together, t_conc = rounds[mid]

    seq_tokens = sum(n for _, n in alone)
    conc_tokens = sum(n for _, n in together)
    # Every round's answers against the one-at-a-time ones.
    equal = min(sum(x[0] == y[0] for x, y in zip(alone, tog)) for tog, _ in rounds)
    res = {
        "label": a.label,
        "requests": len(prompts),
        "max_tokens": a.max_tokens,
        "sequential_tok_s": round(seq_tokens / t_seq, 1),
        "concurrent_tok_s": round(conc_tokens / t_conc, 1),
        "concurrent_rounds_tok_s": [round(r, 1) for r in rates],
        "ratio": round((conc_tokens / t_conc) / (seq_tokens / t_seq), 2),
        "sequential_s": round(t_seq, 2),
        "concurrent_s": round(t_conc, 2),
        "tokens": [seq_tokens, conc_tokens],
        "answers_equal": f"{equal}/{len(prompts)}",
    }
    print(json.dumps(res))


if __name__ == "__main__":
    main()
