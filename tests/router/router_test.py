#!/usr/bin/env python3
"""Three `suanli serve` replicas on loopback behind the real `vllm-router` (from PyPI).

Checks, in order, and prints the figures:
  1. load spread: concurrent distinct requests reach every replica;
  2. prefix affinity: multi-turn conversations through `--policy cache_aware` find more of
     their prompts in the replicas' prefix caches than through `round_robin` (cached tokens
     from `usage`, hits from each replica's `/metrics`); so do they through `--policy kv_aware`
     fed by the replicas' KV-cache events (`--kv-events`), for completions and for chat, and
     the router credits exactly the prefixes the replicas then report cached;
  3. a replica killed (SIGKILL) under load: no request hangs, the router stops routing to it,
     and every request after that succeeds;
  4. a replica drained with SIGTERM: its request in flight finishes whole, it exits 0, and
     new requests succeed on the others.

Usage: router_test.py SUANLI_BIN MODEL_PATH ROUTER_BIN
Exit status 0 when every check holds; the last line is a cargo-style "test result:" line.
"""
import json
import re
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

SUANLI, MODEL, ROUTER = sys.argv[1], sys.argv[2], sys.argv[3]
NAME = "smol"
REPLICAS = 3
# Every request's own deadline: a request that takes longer has hung.
DEADLINE = 120


_HANDED_OUT = set()


def free_port():
    """A port free now and not handed out before in this run: the replicas bind theirs only
    once started, so the kernel may offer one of them again meanwhile (a replica's KV events
    endpoint once got the port another replica was about to serve HTTP on)."""
    while True:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def http(url, body=None, timeout=DEADLINE):
    """(status, parsed JSON or text); status 0 when the connection failed."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read().decode()
            status = r.status
    except urllib.error.HTTPError as e:
        raw, status = e.read().decode(errors="replace"), e.code
    except (urllib.error.URLError, ConnectionError, socket.timeout) as e:
        return 0, str(e)
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw


def wait_ready(url, seconds=180):
    t = time.time()
    while time.time() - t < seconds:
        status, _ = http(url + "/ready", timeout=2)
        if status == 200:
            return
        time.sleep(0.2)
    raise SystemExit(f"{url} never became ready")


def metrics(url):
    """`name{labels}` -> value of a replica's /metrics."""
    status, text = http(url + "/metrics", timeout=10)
    assert status == 200, (url, status, text)
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


class Replica:
    def __init__(self, i, logdir):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(os.path.join(logdir, f"replica{i}.log"), "w")
        ev_port, replay_port = free_port(), free_port()
        self.events = f"tcp://127.0.0.1:{ev_port}"
        self.replay = f"tcp://127.0.0.1:{replay_port}"
        self.proc = subprocess.Popen(
            [SUANLI, "--threads", "1", "serve", "--model", MODEL, "--port", str(self.port),
             "--model-name", NAME, "--ctx", "2048", "--kv-memory", "96MiB", "--max-batch", "8",
             # `*` binds, for the router to connect (vLLM's rule).
             "--kv-events", f"tcp://*:{ev_port}", "--kv-events-replay", f"tcp://*:{replay_port}",
             "--kv-events-hash-seed", "0"],
            stdout=self.log, stderr=subprocess.STDOUT)

    def served(self):
        """Sequences this replica finished (any reason)."""
        m = metrics(self.url)
        return sum(v for k, v in m.items() if k.startswith("suanli_sequences_finished_total"))


class Router:
    def __init__(self, policy, replicas, logdir):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.prometheus = f"http://127.0.0.1:{free_port()}"
        self.log = open(os.path.join(logdir, f"router-{policy}.log"), "w")
        events = []
        if policy == "kv_aware":
            # Static event sources: vllm-router 0.1.17 discovers them only for gRPC workers.
            for r in replicas:
                events += ["--kv-event-source", f"{r.url}={r.events}",
                           "--kv-event-replay-source", f"{r.url}={r.replay}"]
            events += ["--kv-event-block-size", "16", "--kv-event-model", NAME,
                       "--log-level", "debug"]  # its routing decisions, with credited tokens
        self.proc = subprocess.Popen(
            [ROUTER, "--worker-urls", *[r.url for r in replicas], "--policy", policy,
             "--host", "127.0.0.1", "--port", str(self.port), *events,
             "--prometheus-port", self.prometheus.rsplit(":", 1)[1],
             "--health-check-endpoint", "/ready", "--health-check-interval-secs", "1",
             "--health-failure-threshold", "1",
             # Re-sends outlast two health checks (0.1 + 0.15 + ... capped at 1 s: ~3 s in
             # all), so that a request the policy keeps placing on a replica that just died or
             # closed its listener reaches the others once the check has dropped it. The
             # default (5 tries from 50 ms, ~0.4 s) can run out inside one 1 s interval.
             "--retry-max-retries", "8", "--retry-initial-backoff-ms", "100",
             "--retry-max-backoff-ms", "1000"],
            stdout=self.log, stderr=subprocess.STDOUT)
        t = time.time()
        while time.time() - t < 120:
            if self.proc.poll() is not None:
                raise SystemExit(f"vllm-router exited: see {self.log.name}")
            status, _ = http(self.url + "/v1/models", timeout=2)
            if status == 200:
                return
            time.sleep(0.3)
        raise SystemExit("vllm-router never answered")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def chat(self, messages, max_tokens=8):
        return http(self.url + "/v1/chat/completions",
                    {"model": NAME, "messages": messages, "max_tokens": max_tokens,
                     "temperature": 0})


def parallel(fns):
    """Run the callables at once; their results in order, and each one's seconds."""
    out = [None] * len(fns)
    took = [None] * len(fns)

    def one(i):
        t = time.time()
        out[i] = fns[i]()
        took[i] = time.time() - t

    ts = [threading.Thread(target=one, args=(i,)) for i in range(len(fns))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return out, took


TOPICS = ["rivers", "volcanoes", "the moon", "bread", "chess", "glaciers", "owls", "bridges",
          "tea", "comets", "deserts", "violins", "lighthouses", "honey", "kites", "maps",
          "clocks", "coral", "salt", "lanterns"]


def conversation_hits(router, topics, turns=4):
    """Multi-turn conversations, one thread each, every turn resending the whole history as a
    text prompt (`/v1/completions`: vllm-router's cache_aware policy matches prefixes of the
    prompt text; it routes chat requests without their text). Cached / prompt tokens."""
    def talk(topic):
        cached = prompt = 0
        history = f"You are a guide to {topic}. " * 6
        for turn in range(turns):
            history += f"\nUser: Tell me fact {turn + 1} about {topic}.\nGuide:"
            status, r = http(router.url + "/v1/completions",
                             {"model": NAME, "prompt": history, "max_tokens": 8, "temperature": 0})
            assert status == 200, (status, r)
            prompt += r["usage"]["prompt_tokens"]
            cached += r["usage"].get("prompt_tokens_details", {}).get("cached_tokens", 0)
            history += r["choices"][0]["text"]
        return cached, prompt
    results, _ = parallel([lambda t=t: talk(t) for t in topics])
    return sum(c for c, _ in results), sum(p for _, p in results)


def chat_hits(router, topics, turns=4):
    """`conversation_hits` through `/v1/chat/completions`, the history as messages."""
    def talk(topic):
        cached = prompt = 0
        messages = [{"role": "system", "content": f"You are a guide to {topic}. " * 6}]
        for turn in range(turns):
            messages.append({"role": "user", "content": f"Tell me fact {turn + 1} about {topic}."})
            status, r = router.chat(messages)
            assert status == 200, (status, r)
            prompt += r["usage"]["prompt_tokens"]
            cached += r["usage"].get("prompt_tokens_details", {}).get("cached_tokens", 0)
            messages.append({"role": "assistant", "content": r["choices"][0]["message"]["content"]})
        return cached, prompt
    results, _ = parallel([lambda t=t: talk(t) for t in topics])
    return sum(c for c, _ in results), sum(p for _, p in results)


def router_metric(router, prefix):
    """Sum of the router's own Prometheus series starting with `prefix`."""
    status, text = http(router.prometheus + "/metrics", timeout=10)
    assert status == 200, (status, text)
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
               if l.startswith(prefix))


def kv_credited(router):
    """The prefix tokens kv_aware credited per decision (its debug log)."""
    router.log.flush()
    with open(router.log.name, errors="replace") as f:
        text = re.sub(r"\x1b\[[0-9;]*m", "", f.read())  # its colours
    return [int(m) for m in re.findall(r"credited_prefix_tokens=(\d+)", text)]


def main():
    passed = failed = 0
    logdir = tempfile.mkdtemp(prefix="suanli-router-")
    replicas = [Replica(i, logdir) for i in range(REPLICAS)]
    routers = []
    try:
        for r in replicas:
            wait_ready(r.url)
        # 1. Load spread.
        rr = Router("round_robin", replicas, logdir)
        routers.append(rr)
        before = [r.served() for r in replicas]
        results, _ = parallel([lambda i=i: rr.chat([{"role": "user", "content": f"One word about {TOPICS[i]}."}], 4)
                               for i in range(9)])
        assert all(s == 200 for s, _ in results), results
        per = [r.served() - b for r, b in zip(replicas, before)]
        print(f"load spread (round_robin, 9 requests): {per} per replica")
        assert sum(per) == 9 and all(p >= 1 for p in per), per
        passed += 1

        # 2. Prefix affinity: the same kind of workload through both policies (other topics
        # the second time, so that neither run finds the other's prefixes cached).
        c_rr, p_rr = conversation_hits(rr, TOPICS[:5])
        rr.stop()
        routers.remove(rr)
        ca = Router("cache_aware", replicas, logdir)
        routers.append(ca)
        hits_before = sum(metrics(r.url)["suanli_prompt_tokens_cached_total"] for r in replicas)
        c_ca, p_ca = conversation_hits(ca, TOPICS[5:10])
        hits_after = sum(metrics(r.url)["suanli_prompt_tokens_cached_total"] for r in replicas)
        print(f"prefix cache hits, 5 conversations x 4 turns: round_robin {c_rr}/{p_rr} "
              f"= {c_rr / p_rr:.0%}, cache_aware {c_ca}/{p_ca} = {c_ca / p_ca:.0%} "
              f"(replicas' /metrics: {hits_after - hits_before:.0f} cached tokens)")
        assert hits_after - hits_before == c_ca
        assert c_ca / p_ca > c_rr / p_rr, "cache_aware routing found no more cached prefixes"
        passed += 1

        # 2b. kv_aware, fed by the replicas' KV events: the same workload, then chat.
        kv = Router("kv_aware", replicas, logdir)
        routers.append(kv)
        c_kv, p_kv = conversation_hits(kv, TOPICS[10:15])
        c_kc, p_kc = chat_hits(kv, TOPICS[15:20])
        hits = router_metric(kv, 'vllm_router_kv_placement_lookups_total{result="hit"}')
        lookups = router_metric(kv, "vllm_router_kv_placement_lookups_total")
        credited = kv_credited(kv)
        print(f"kv_aware (events): completions {c_kv}/{p_kv} = {c_kv / p_kv:.0%}, "
              f"chat {c_kc}/{p_kc} = {c_kc / p_kc:.0%} cached; the router found a cached "
              f"prefix for {hits:.0f} of {lookups:.0f} requests and credited "
              f"{sum(credited)} tokens")
        assert c_kv / p_kv > c_rr / p_rr, "kv_aware routing found no more cached prefixes"
        assert c_kc / p_kc > c_rr / p_rr, "kv_aware chat routing found no more cached prefixes"
        # What the router credited from the events is what the replicas then served cached:
        # each turn's blocks are announced (after the step that cached them) long before its
        # answer returns and the next turn is sent, and no two topics share a whole block.
        assert sum(credited) == c_kv + c_kc, (sum(credited), c_kv + c_kc)
        kv.stop()
        routers.remove(kv)
        passed += 1

        # 3. A replica killed under load.
        # Long answers (end of text banned), so that the kill lands while they run.
        body = lambda i: {"model": NAME, "prompt": f"Chapter {i}. Once upon a time", "max_tokens": 200,
                          "temperature": 0, "logit_bias": {"0": -100, "2": -100}}
        jobs = [lambda i=i: http(ca.url + "/v1/completions", body(i)) for i in range(9)]
        running = {"n": 0}
        victims = []

        def kill():
            # Not after a fixed delay: a fast machine finishes every answer before it, and the
            # router may place none on a given replica. Once all 9 are placed, the replica
            # answering the most dies.
            end = time.time() + DEADLINE / 2
            while time.time() < end:
                held = []
                for r in replicas:
                    m = metrics(r.url)
                    held.append(m[f'vllm:num_requests_running{{model_name="{NAME}"}}']
                                + m[f'vllm:num_requests_waiting{{model_name="{NAME}"}}'])
                if sum(held) >= len(jobs):
                    i = max(range(len(replicas)), key=lambda i: held[i])
                    running["n"] = held[i]
                    victims.append(replicas[i])
                    replicas[i].proc.send_signal(signal.SIGKILL)
                    return
                time.sleep(0.02)
        killer = threading.Thread(target=kill)
        killer.start()
        results, took = parallel(jobs)
        killer.join()
        ok = [s == 200 and r["usage"]["completion_tokens"] == 200 for s, r in results]
        failed_codes = sorted({s for s, _ in results if s != 200})
        print(f"replica killed under load with {running['n']:.0f} of them there: "
              f"{sum(ok)}/9 answered whole, {9 - sum(ok)} failed "
              f"(status {failed_codes}), slowest {max(took):.1f} s")
        assert victims, "no replica was seen answering"
        victim = victims[0]
        assert victim.proc.wait(10) == -signal.SIGKILL
        assert max(took) < DEADLINE, "a request hung"
        # Those on the other replicas are unaffected.
        assert sum(ok) >= 9 - running["n"], results
        time.sleep(3)  # a few health checks
        results, _ = parallel([lambda i=i: ca.chat([{"role": "user", "content": f"Name a colour ({i})."}], 4)
                               for i in range(6)])
        after = [s for s, _ in results]
        print(f"after the kill: {after.count(200)}/6 answered")
        assert after.count(200) == 6, results
        passed += 1

        # 4. A replica drained with SIGTERM while answering.
        drained, other = [r for r in replicas if r is not victim]
        long_req = {"model": NAME, "prompt": "Once upon a time", "max_tokens": 120,
                    "temperature": 0, "logit_bias": {"0": -100, "2": -100}}
        holder = {}
        t = threading.Thread(target=lambda: holder.setdefault(
            "r", http(drained.url + "/v1/completions", long_req)))
        t.start()
        time.sleep(0.5)
        drained.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        results, _ = parallel([lambda i=i: ca.chat([{"role": "user", "content": f"Name a fruit ({i})."}], 4)
                               for i in range(4)])
        t.join()
        code = drained.proc.wait(60)
        status, r = holder["r"]
        new_ok = sum(1 for s, _ in results if s == 200)
        print(f"drained replica: its request in flight {status} with "
              f"{r['usage']['completion_tokens'] if status == 200 else '-'} tokens, exit {code}; "
              f"{new_ok}/4 new requests answered by the others")
        assert status == 200 and r["usage"]["completion_tokens"] == 120, (status, r)
        assert code == 0
        assert new_ok == 4, results
        assert other.proc.poll() is None
        passed += 1
    except AssertionError as e:
        failed += 1
        print(f"FAILED: {e!r}")
    finally:
        for r in routers:
            r.stop()
        for r in replicas:
            if r.proc.poll() is None:
                r.proc.terminate()
                try:
                    r.proc.wait(30)
                except subprocess.TimeoutExpired:
                    r.proc.kill()
    print(f"logs in {logdir}")
    print(f"test result: {'ok' if failed == 0 else 'FAILED'}. {passed} passed; {failed} failed; "
          f"0 ignored; 0 measured; 0 filtered out (vllm-router in front of {REPLICAS} replicas)")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
