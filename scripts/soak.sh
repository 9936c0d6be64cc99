#!/usr/bin/env bash
# A bounded soak of `suanli serve` on loopback: mixed load with random cancellations for SECONDS
# (default 120), then the server must be idle (no sequence, no KV block), have answered no 5xx,
# and exit 0 on SIGTERM. Prints the memory and KV figures at the start, peak and end.
#   scripts/soak.sh [SECONDS] [MODEL]
# SOAK_SERVE_ARGS adds options to `serve` (e.g. "--spec ngram").
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-120}
MODEL=${2:-smollm2-135m}
BIN=${SUANLI_BIN:-target/release/suanli}
[ -x "$BIN" ] || cargo build --release --locked
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
key="soak-$$"
SUANLI_API_KEY=$key "$BIN" --threads 2 serve --model "$MODEL" --port "$port" --ctx 2048 --max-batch 8 --max-queue 16 ${SOAK_SERVE_ARGS:-} 2>/dev/null &
pid=$!
trap 'kill "$pid" 2>/dev/null || true' EXIT
python3 scripts/wait-http.py "$port" /ready
set +e
python3 bench/soak.py --url "http://127.0.0.1:$port" --key "$key" --pid "$pid" --seconds "$SECS"
status=$?
kill -TERM "$pid"
wait "$pid"
code=$?
set -e
trap - EXIT
echo "suanli serve exit status after SIGTERM: $code"
[ "$code" -eq 0 ] || status=1
[ "$status" -eq 0 ] && r=ok || r=FAILED
echo "test result: $r. $((status == 0)) passed; $((status != 0)) failed; 0 ignored; 0 measured; 0 filtered out (soak, ${SECS}s)"
exit "$status"
