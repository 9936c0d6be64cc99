#!/usr/bin/env python3
"""How far a draft model should draft: its proposals replayed against the model's answers.

The model answers each prompt greedily (`suanli run --json`); the draft model then reads each
prompt and answer whole (`suanli serve`, a completion of the token ids with `echo` and
`logprobs`), which gives, at every token of the answer, the draft's own choice and its
probability — what it would propose there (teacher-forced: after a refusal the engine drafts
from the model's token, as here). The answers are then replayed through two rules for the
draft's length, with a pass verifying r rows costing 1 + SLOPE·(r − 1) of the model's decode
steps and each drafted token DRAFT of one:
  token   each proposal alone must reach 0.5, and the controller's expected length caps the
          draft (what the engine did before `DraftRun`);
  run     the draft goes on while the product of its proposals' probabilities stays at least
          the threshold (`DraftRun`, crates/engine/src/spec.rs), for each of THRESHOLDS;
both with the controller deciding whether to draft at all (`Controller`, decayed acceptance,
drafts only for a 5 % gain; while it does not, an unverified probe now and then, `probe_due`). Prints the draft's calibration (share taken by probability) and
each rule's geometric-mean speed-up per kind of task. A model, not a measurement:
`suanli bench --spec draft` measures.

  python3 bench/spec_draft_replay.py MODEL DRAFT PROMPTS.jsonl
  SLOPE=0.13 DRAFT=0.27 THRESHOLDS="0.5 0.6 0.7" GEN=160 python3 bench/spec_draft_replay.py \\
      qwen2.5-coder-1.5b qwen2.5-coder-0.5b bench/spec-chat.jsonl
(SLOPE and DRAFT default to what Qwen2.5-Coder-1.5B drafted by the 0.5B measured on a 2-core
AMD Zen 4: `bench --spec draft` prints the draft's milliseconds per token, `matmul_probe` with
NS=1,2,3,4 the step from one row to a few.)
"""
import json, math, os, socket, subprocess, sys, urllib.request

from spec_ceiling import DECAY, MARGIN, SUANLI, answer

MAX_DRAFT = 10
PROBE_EVERY, PROBE_MOST = 8, 128


def answers(model, path, gen):
    """(kind, prompt ids, greedy answer ids) per task (`spec_ceiling.answer`)."""
    tasks = [json.loads(line) for line in open(path) if line.strip()]
    return [(t["kind"], *answer(model, t["prompt"], gen)) for t in tasks]


def teacher_forced(draft, tasks):
    """Per task, per answer token: (the draft's top choice is that token, its probability)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    server = subprocess.Popen([SUANLI, "serve", "--model", draft, "--model-name", "draft",
                               "--port", str(port)], stderr=subprocess.DEVNULL)
    try:
        subprocess.run([sys.executable, "scripts/wait-http.py", str(port), "/ready"], check=True)
        out = []
        for kind, ids, ans in tasks:
            body = {"model": "draft", "prompt": ids + ans, "max_tokens": 1, "temperature": 0,
                    "echo": True, "logprobs": 1}
            req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions",
                                         data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
            lp = json.load(urllib.request.urlopen(req))["choices"][0]["logprobs"]
            rows = []
            for i in range(len(ans)):
                j = len(ids) + i
                (choice, logp), = list(lp["top_logprobs"][j].items())[:1]
                rows.append((choice == lp["tokens"][j], math.exp(logp)))
            out.append((kind, rows))
        return out
    finally:
        server.kill()
        server.wait()


def replay(rows, rule, threshold, slope, draft):
    cost = lambda r: 1.0 + slope * (r - 1)
    succ, trials, i, time, probe_in = 1.0, 2.0, 0, 0.0, PROBE_EVERY
    while i < len(rows):
        a = succ / trials
        best, best_rate, expected, ak = 0, (1 + MARGIN) / cost(1), 1.0, 1.0
        for k in range(1, MAX_DRAFT + 1):
            ak *= a
            expected += ak
            if expected / (cost(k + 1) + k * draft) > best_rate:
                best, best_rate = k, expected / (cost(k + 1) + k * draft)
        room = len(rows) - i - 1
        if best == 0 or room == 0:
            # A plain step; now and then the draft proposes one token anyway, left unverified,
            # to keep the rate measured (`probe_due`; its catching up is priced as one token).
            time += cost(1)
            probe_in -= 1
            if probe_in <= 0 and room > 0:
                probe_in = min(max(round(PROBE_EVERY * 0.5 / max(a, 1e-3)), PROBE_EVERY), PROBE_MOST)
                time += draft
                taken = int(rows[i][0])
                succ, trials = succ * DECAY + taken, trials * DECAY + 1
            i += 1
            continue
        cap = min(best if rule == "token" else MAX_DRAFT, room)
        k, run = 0, 1.0
        while k < cap:
            p = rows[i + k][1]
            k += 1
            run *= p
            if (p < 0.5) if rule == "token" else (run < threshold):
                break
        taken = 0
        while taken < k and rows[i + taken][0]:
            taken += 1
        seen = taken + (1 if taken < k else 0)
        succ, trials = succ * DECAY ** seen + taken, trials * DECAY ** seen + seen
        time += k * draft + cost(k + 1)
        i += taken + 1
    return len(rows) / time


def main():
    model, draft, path = sys.argv[1:4]
    slope = float(os.environ.get("SLOPE", "0.13"))
    draft_cost = float(os.environ.get("DRAFT", "0.27"))
    thresholds = [float(t) for t in os.environ.get("THRESHOLDS", "0.5 0.6 0.7").split()]
    tasks = answers(model, path, int(os.environ.get("GEN", "160")))
    forced = teacher_forced(draft, tasks)
    kinds = sorted({k for k, _ in forced})
    bins = [0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.01]
    for kind in kinds:
        rows = [r for k, rs in forced if k == kind for r in rs]
        share = []
        for lo, hi in zip(bins, bins[1:]):
            b = [taken for taken, p in rows if lo <= p < hi]
            if b:
                share.append(f"{lo:.1f}–{min(hi, 1):.1f}: {100 * sum(b) / len(b):.0f} % of {len(b)}")
        print(f"{kind}: the draft's choice is the model's at " + ", ".join(share))
    print(f"verifying r rows costs 1 + {slope}·(r − 1) decode steps, a drafted token {draft_cost}")
    rules = [("token", 0.5)] + [("run", t) for t in thresholds]
    for kind in kinds:
        for rule, t in rules:
            r = [replay(rs, rule, t, slope, draft_cost) for k, rs in forced if k == kind and len(rs) > 1]
            g = math.exp(sum(map(math.log, r)) / len(r))
            name = "each token ≥ 0.5, controller's length" if rule == "token" else f"run ≥ {t}"
            print(f"{kind:<10} {name:<40} {g:.2f}×  " + " ".join(f"{x:.2f}" for x in r))


if __name__ == "__main__":
    main()
