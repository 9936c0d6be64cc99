#!/usr/bin/env python3
"""The cost of constrained decoding, measured through a running `suanli serve`:

    suanli serve --port 8080 &            # the default model, Qwen2.5-Coder-0.5B
    python3 bench/structured_bench.py --url http://127.0.0.1:8080 [--streams 1 16] [--tokens 128]

For 1 and 16 concurrent streams it runs the same JSON-asking prompts unconstrained and with a
JSON schema (streamed, greedy), and reports decode throughput: tokens after each stream's
first, over the time from the first stream's first token to the last stream's last token
(batch 1: one stream's own span). Constrained answers may end sooner, so only decode tokens
and their time are compared, never answer lengths. From the server's /metrics it also reports
how often a constrained token's first draw was refused (a whole-vocabulary mask) and the share
of the engine's step time spent checking and masking — the constraint's own cost, free of the
noise of a shared machine. With --bin, schema compilation times from `suanli run`.
Standard library only."""
import argparse
import json
import os
import re
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request

SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 60},
        "year": {"type": "integer", "minimum": 1900, "maximum": 2030},
        "genres": {"type": "array", "items": {"type": "string", "maxLength": 20}, "minItems": 1, "maxItems": 4},
        "director": {"$ref": "#/$defs/person"},
        "cast": {"type": "array", "items": {"$ref": "#/$defs/person"}, "minItems": 1, "maxItems": 6},
        "rating": {"anyOf": [{"type": "number", "minimum": 0, "maximum": 10}, {"type": "null"}]},
        "summary": {"type": "string", "maxLength": 400},
    },
    "required": ["title", "year", "genres", "director", "cast", "rating", "summary"],
    "additionalProperties": False,
    "$defs": {"person": {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 40},
        "born": {"type": ["integer", "null"], "minimum": 1850, "maximum": 2020}},
        "required": ["name", "born"], "additionalProperties": False}},
}

COMPILE_SCHEMAS = {
    "movie ($ref, anyOf, arrays)": SCHEMA,
    "flat enums and bounds": {"type": "object", "properties": {
        "status": {"enum": ["open", "closed", "pending"]}, "priority": {"type": "integer", "minimum": 1, "maximum": 5},
        "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"}}, "required": ["status", "priority", "code"]},
    "nested 4 deep": {"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {
        "type": "object", "properties": {"c": {"type": "object", "properties": {"d": {"type": "string"}},
                                               "required": ["d"]}}, "required": ["c"]}}, "required": ["b"]}},
        "required": ["a"]},
    "non-ASCII keys, nullable": {"type": "object", "properties": {"城市": {"type": "string"},
        "人口": {"type": ["integer", "null"]}, "café": {"type": "boolean"}}, "required": ["城市", "人口", "café"]},
}

PROMPTS = [
    "Describe the movie {} as JSON with title, year, genres, director, cast, rating and summary.".format(m)
    for m in ["Inception", "Spirited Away", "The Matrix", "Amélie", "Parasite", "Alien", "Heat", "Up",
              "Jaws", "Rocky", "Casablanca", "Vertigo", "Fargo", "Psycho", "Brazil", "Ran"]
]


def post(url, body, stream):
    req = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    return urllib.request.urlopen(req, timeout=3600)


def one_stream(url, prompt, tokens, schema, out):
    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": tokens, "temperature": 0,
            "stream": True}
    if schema is not None:
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "m", "schema": schema}}
    times = []
    with post(url, body, True) as r:
        for line in r:
            line = line.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ch = json.loads(line[6:])
            if ch["choices"] and ch["choices"][0]["delta"].get("content"):
                times.append(time.perf_counter())
    out.append(times)


def decode_rate(url, streams, tokens, schema):
    out = []
    threads = [threading.Thread(target=one_stream, args=(url, PROMPTS[i % len(PROMPTS)], tokens, schema, out))
               for i in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Text deltas, not tokens: a delta holds one token's complete characters (a multi-byte
    # character split over tokens arrives once), the same for both modes.
    n = sum(max(len(t) - 1, 0) for t in out)
    span = max(t[-1] for t in out if t) - min(t[0] for t in out if t)
    return n / span, n


def counters(url):
    with urllib.request.urlopen(url + "/metrics") as r:
        out = {}
        for line in r.read().decode().splitlines():
            if line and not line.startswith("#") and "{" not in line:
                k, v = line.split()
                out[k] = float(v)
        return out


def compile_ms(binary, model, schema):
    """The CLI's own timing of one schema's compilation (the trie is built before it)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(schema, f)
    r = subprocess.run([binary, "run", "--model", model, "--raw", "--max-tokens", "1",
                        "--json-schema", f.name, "x"], capture_output=True, text=True)
    os.unlink(f.name)
    m = re.search(r"compiled in ([0-9.]+) ms", r.stderr)
    return float(m.group(1)) if m else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--bin", help="the suanli binary, to time schema compilation")
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    a = ap.parse_args()
    decode_rate(a.url, 1, 8, None)  # warm up
    print(f"{'streams':>7} {'plain tok/s':>12} {'schema tok/s':>13} {'ratio':>6} "
          f"{'masked':>7} {'constraint share of engine time':>32}   (median of {a.rounds}, alternating)")
    for s in a.streams:
        plain, con, share, masked = [], [], [], []
        for _ in range(a.rounds):
            plain.append(decode_rate(a.url, s, a.tokens, None)[0])
            before = counters(a.url)
            con.append(decode_rate(a.url, s, a.tokens, SCHEMA)[0])
            after = counters(a.url)
            d = {k: after[k] - before.get(k, 0) for k in after}
            share.append(d["suanli_constraint_seconds_total"] / d["suanli_engine_step_seconds_total"])
            masked.append(d["suanli_constraint_masks_total"] / max(d["suanli_constrained_tokens_total"], 1))
        p, c = statistics.median(plain), statistics.median(con)
        print(f"{s:>7} {p:>12.1f} {c:>13.1f} {c / p:>6.3f} {statistics.median(masked):>7.1%} "
              f"{statistics.median(share):>32.2%}")
    if a.bin:
        print("\nschema compilation (suanli run's own timing, after the token trie; median of 3):")
        for name, sch in COMPILE_SCHEMAS.items():
            ms = statistics.median(compile_ms(a.bin, a.model, sch) for _ in range(3))
            print(f"  {name:<30} {ms:7.1f} ms")


if __name__ == "__main__":
    main()
