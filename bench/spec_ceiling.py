#!/usr/bin/env python3
"""What n-gram speculation can give on a set of prompts, whatever the verifying cost.

Each prompt is answered greedily (`suanli run --json`), then the answer is replayed through the
engine's prompt lookup (crates/engine/src/spec.rs: `Lookup`, suffixes of 4 down to 2 tokens,
the copy followed while it holds) and draft-length controller (`Controller`: decayed acceptance
rate, drafts only for a 5 % gain), with a verifying pass of r rows costing 1 + SLOPE·(r − 1)
decode steps. Prints each task's speed-up and the geometric mean for each SLOPE (0: verifying
is free, the lookup's own ceiling) and each longest draft (MAX_DRAFTS, default 10 as `--draft-max`).
A model, not a measurement: `suanli bench --spec` measures.

  python3 bench/spec_ceiling.py MODEL PROMPTS.jsonl [SLOPE ...]     (default slopes 0 0.08 0.12)
  MAX_DRAFTS="10 16 32" python3 bench/spec_ceiling.py ...
"""
import json, math, os, subprocess, sys

SUANLI = "target/release/suanli"
DECAY, MARGIN = 0.9, 0.05


def answer(model, prompt, gen=256):
    """The prompt's ids as the chat template of Qwen2.5 (the models these prompt files are for)
    lays them out, and the greedy answer's ids (at most `gen`)."""
    run = [SUANLI, "run", "--model", model, "--max-tokens", str(gen), "--temperature", "0", "--json", "-"]
    r = json.loads(subprocess.run(run, input=prompt, capture_output=True, text=True, check=True).stdout)
    tmpl = ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
            "assistant.<|im_end|>\n<|im_start|>user\n" + prompt + "<|im_end|>\n<|im_start|>assistant\n")
    tok = [SUANLI, "tokenize", "--model", model, "--special", "--json", tmpl]
    t = json.loads(subprocess.run(tok, capture_output=True, text=True, check=True).stdout)
    return t["ids"], r["tokens"]


def lookup(h, limit):
    for n in range(4, 1, -1):
        if n >= len(h):
            continue
        suffix = h[-n:]
        for j in range(len(h) - n - 1, -1, -1):
            if h[j:j + n] == suffix:
                return j + n, h[j + n:j + n + limit]
    return None, []


def replay(prompt, ans, slope, max_draft):
    cost = lambda rows: 1.0 + slope * (rows - 1)
    succ, trials = 1.0, 2.0

    def observe(drafted, taken):
        nonlocal succ, trials
        for _ in range(taken + (1 if taken < drafted else 0)):
            succ, trials = succ * DECAY, trials * DECAY
        succ, trials = succ + taken, trials + taken + (1 if taken < drafted else 0)

    def draft_len(avail):
        a = succ / trials
        best, best_rate, expected, ak = 0, (1 + MARGIN) / cost(1), 1.0, 1.0
        for k in range(1, min(avail, max_draft) + 1):
            ak *= a
            expected += ak
            if expected / cost(k + 1) > best_rate:
                best, best_rate = k, expected / cost(k + 1)
        return best

    h, src, time, i = list(prompt) + [ans[0]], None, 0.0, 1
    while i < len(ans):
        room, prop = len(ans) - i - 1, []
        if src is not None and 1 <= src < len(h) and h[src - 1] == h[-1]:
            prop = h[src:src + room]
        if not prop:
            src, prop = lookup(h, room)
        k = draft_len(len(prop))
        d = prop[:k]
        if k == 0 and prop:
            observe(1, int(prop[0] == ans[i]))
        taken = 0
        while taken < len(d) and d[taken] == ans[i + taken]:
            taken += 1
        if d:
            observe(len(d), taken)
        time += cost(1 + len(d))
        emitted = min(taken + 1, len(ans) - i)
        h += ans[i:i + emitted]
        i += emitted
        if src is not None:
            src += emitted
    return (len(ans) - 1) / time


def main():
    model, path = sys.argv[1], sys.argv[2]
    slopes = [float(s) for s in sys.argv[3:]] or [0.0, 0.08, 0.12]
    tasks = [answer(model, json.loads(line)["prompt"]) for line in open(path) if line.strip()]
    for most in map(int, os.environ.get("MAX_DRAFTS", "10").split()):
        for slope in slopes:
            r = [replay(p, a, slope, most) for p, a in tasks if len(a) > 1]
            g = math.exp(sum(map(math.log, r)) / len(r))
            print(f"drafts of at most {most}, {slope:.2f} decode steps per extra row: {g:.2f}× "
                  "(geometric mean); " + " ".join(f"{x:.2f}" for x in r))


if __name__ == "__main__":
    main()
