#!/usr/bin/env python3
"""Soak a running `suanli serve` (loopback only, bounded in time): workers send a mix of
streamed and non-streamed chat and completions, `n` > 1, stop strings, JSON schemas and tool
calls, tokenize calls and bad requests, and cancel a share of them at random moments (before the
answer, mid-stream, while waiting for a non-streamed answer). Reports status counts, and the server's resident memory and
KV blocks at the start and the end; fails if anything is left running or any answer was a 5xx.

  python3 bench/soak.py --url http://127.0.0.1:8080 --pid PID --seconds 120
"""

import argparse
import http.client
import json
import random
import socket
import threading
import time
import urllib.parse


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def metrics(host, port, key):
    c = http.client.HTTPConnection(host, port, timeout=30)
    c.request("GET", "/metrics", headers={"Authorization": f"Bearer {key}"})
    text = c.getresponse().read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            k, v = line.split()
            out[k] = float(v)
    return out


BODIES = [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Tell me about the sea."}], "max_tokens": 48}),
    ("/v1/chat/completions", {"messages": [{"role": "system", "content": "Be brief."},
                                           {"role": "user", "content": "用中文写一首诗。"}], "max_tokens": 40, "temperature": 0.9, "seed": 1}),
    ("/v1/completions", {"prompt": "Once upon a time", "max_tokens": 64, "n": 2, "temperature": 0.8, "stop": ["."]}),
    ("/v1/completions", {"prompt": [1, 2, 3, 4, 5, 6, 7, 8], "max_tokens": 32, "logprobs": 3, "temperature": 0}),
    ("/v1/completions", {"prompt": "word " * 300, "max_tokens": 16, "temperature": 0}),
    # Constrained answers, which draft the text their grammar forces by default (`--spec auto`).
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "A city as JSON."}], "max_tokens": 40,
                              "response_format": {"type": "json_schema", "json_schema": {"name": "city", "schema": {
                                  "type": "object", "properties": {"name": {"type": "string"},
                                                                   "people": {"type": "integer"}},
                                  "required": ["name", "people"]}}}}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Weather in Paris?"}], "max_tokens": 40,
                              "temperature": 0.7, "tool_choice": "required",
                              "tools": [{"type": "function", "function": {"name": "weather", "parameters": {
                                  "type": "object", "properties": {"city": {"type": "string"}},
                                  "required": ["city"]}}}]}),
]
BAD = [
    ("/v1/chat/completions", {"messages": [], "max_tokens": 5}),
    ("/v1/completions", {"prompt": "x", "temperature": -1}),
    ("/v1/completions", {"prompt": [1, 99999999]}),
    ("/v1/chat/completions", "{not json"),
]


def one(host, port, key, rng, stats, lock):
    def count(k):
        with lock:
            stats[k] = stats.get(k, 0) + 1

    kind = rng.random()
    if kind < 0.1:
        path, body = rng.choice(BAD)
    elif kind < 0.15:
        path, body = "/tokenize", {"content": "hello 世界 " * rng.randint(1, 50)}
    else:
        path, body = rng.choice(BODIES)
        body = dict(body, stream=rng.random() < 0.5)
    data = body if isinstance(body, str) else json.dumps(body)
    cancel = rng.random() < 0.15
    s = socket.create_connection((host, port), timeout=120)
    try:
        req = (f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {key}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(data.encode())}\r\n\r\n{data}")
        s.sendall(req.encode())
        if cancel:
            # Hang up at a random moment: before any answer, or after some of it.
            time.sleep(rng.random() * 0.5)
            if rng.random() < 0.5:
                s.recv(rng.randint(1, 400))
            count("cancelled")
            return
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        status = int(buf.split(b" ", 2)[1]) if buf.startswith(b"HTTP/1.1 ") else 0
        count(f"status {status}")
    finally:
        s.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--key", default="none")
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--workers", type=int, default=8)
    a = ap.parse_args()
    u = urllib.parse.urlparse(a.url)
    host, port = u.hostname, u.port
    assert host in ("127.0.0.1", "localhost", "::1"), "loopback only"
    m0, r0 = metrics(host, port, a.key), rss_mb(a.pid)
    stats, lock = {}, threading.Lock()
    deadline = time.time() + a.seconds
    peak = {"rss": r0, "blocks": 0.0}

    def worker(i):
        rng = random.Random(i)
        while time.time() < deadline:
            try:
                one(host, port, a.key, rng, stats, lock)
            except Exception as e:  # a refused or reset connection is a finding, counted
                with lock:
                    stats[f"error {type(e).__name__}"] = stats.get(f"error {type(e).__name__}", 0) + 1

    def sampler():
        while time.time() < deadline:
            peak["rss"] = max(peak["rss"], rss_mb(a.pid))
            peak["blocks"] = max(peak["blocks"], metrics(host, port, a.key)["suanli_kv_blocks_used"])
            time.sleep(1)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(a.workers)]
    threads.append(threading.Thread(target=sampler))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Give cancellations one moment to land, then everything must be back to idle.
    t0 = time.time()
    while True:
        m1 = metrics(host, port, a.key)
        busy = m1["suanli_requests_running"] + m1["suanli_requests_waiting"] + m1["suanli_kv_blocks_used"]
        if busy == 0 or time.time() - t0 > 10:
            break
        time.sleep(0.1)
    r1 = rss_mb(a.pid)
    res = {
        "seconds": a.seconds,
        "workers": a.workers,
        "requests": stats,
        "generated_tokens": m1["suanli_generation_tokens_total"] - m0["suanli_generation_tokens_total"],
        "rss_mb": {"start": round(r0, 1), "peak": round(peak["rss"], 1), "end": round(r1, 1)},
        "kv_blocks_used": {"start": m0["suanli_kv_blocks_used"], "peak": peak["blocks"], "end": m1["suanli_kv_blocks_used"]},
        "kv_blocks_total": m1["suanli_kv_blocks_total"],
        "running_end": m1["suanli_requests_running"],
        "waiting_end": m1["suanli_requests_waiting"],
    }
    print(json.dumps(res))
    bad = [k for k in stats if k.startswith("status 5") or k.startswith("error")]
    ok = busy == 0 and not bad
    print("soak:", "ok" if ok else f"FAILED ({'leftover work' if busy else ''} {bad})")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
