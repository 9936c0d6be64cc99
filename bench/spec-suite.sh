#!/usr/bin/env bash
# Speculative decoding as issue 20 judges it, in one run: greedy answers decoded with and
# without speculation by the same binary (`suanli bench --spec`, alternating per task), on
#   1. code edits (the three built-in ones, bench/spec-code-edits.jsonl and -2.jsonl) with
#      n-gram drafts, on Qwen2.5-Coder-0.5B and Qwen2.5-Coder-1.5B;
#   2. English and Chinese chat (bench/spec-chat.jsonl) with n-gram drafts on both models, and on
#      the 1.5B drafted by the 0.5B;
#   3. (SERVE=1) the server at N concurrent greedy completions of TOKENS tokens, started with
#      `--spec off`, `auto` (the default) and `ngram`, alternating ROUNDS times
#      (bench/serve_throughput.py), and one stream of answers under a JSON schema
#      (bench/structured_bench.py: the text the schema forces is drafted but with `off`).
# Prints each run's geometric-mean ratio per kind of task, the share of drafts taken and tokens
# per verifying pass, then a summary table. Every answer must be the same with and without
# speculation (`bench --spec` fails otherwise).
#
#   THREADS=2 GEN=256 GEN_BIG=160 SERVE=1 N=16 TOKENS=64 ROUNDS=3 bench/spec-suite.sh
# (GEN: tokens per answer on the 0.5B; GEN_BIG on the 1.5B. ONLY=code|chat|serve runs one part.)
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
GEN=${GEN:-256}
GEN_BIG=${GEN_BIG:-160}
SERVE=${SERVE:-1}
N=${N:-16}
TOKENS=${TOKENS:-64}
ROUNDS=${ROUNDS:-3}
ONLY=${ONLY:-}
BIN=target/release/suanli
[ -x "$BIN" ] || cargo build --release --locked
SMALL=qwen2.5-coder-0.5b
BIG=qwen2.5-coder-1.5b
"$BIN" pull "$SMALL" >/dev/null 2>&1
"$BIN" pull "$BIG" >/dev/null 2>&1
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# bench NAME MODEL GEN PROMPTS(builtin|file) SPEC [DRAFT]: one `bench --spec` run, JSON kept.
bench() {
    local name=$1 model=$2 gen=$3 prompts=$4 spec=$5 draft=${6:-}
    local args=(--threads "$THREADS" bench --model "$model" --spec "$spec" --gen-tokens "$gen"
        --repetitions 1 --json)
    [ "$prompts" = builtin ] || args+=(--spec-prompts "$prompts")
    [ -z "$draft" ] || args+=(--draft-model "$draft")
    echo "== $name: suanli ${args[*]}" >&2
    "$BIN" "${args[@]}" 2>"$out/$name.log" >"$out/$name.json" || {
        tail -5 "$out/$name.log" >&2
        exit 1
    }
    python3 - "$name" "$out/$name.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[2]))
for k in d["kinds"]:
    r = "-" if k["ratio"] is None else f'{k["ratio"]:.2f}×'
    print(f'{sys.argv[1]:<32} {k["kind"]:<10} {r:>7}  {100 * k["acceptance"]:3.0f} % taken  '
          f'{k["mean_accepted_length"]:.2f} per pass')
PY
}

rows=()
if [ -z "$ONLY" ] || [ "$ONLY" = code ]; then
    for m in "$SMALL:$GEN" "$BIG:$GEN_BIG"; do
        model=${m%%:*} gen=${m##*:}
        rows+=("$(bench "$model-ngram-builtin" "$model" "$gen" builtin ngram)")
        rows+=("$(bench "$model-ngram-edits" "$model" "$gen" bench/spec-code-edits.jsonl ngram)")
        rows+=("$(bench "$model-ngram-edits-2" "$model" "$gen" bench/spec-code-edits-2.jsonl ngram)")
    done
fi
if [ -z "$ONLY" ] || [ "$ONLY" = chat ]; then
    rows+=("$(bench "$SMALL-ngram-chat" "$SMALL" "$GEN" bench/spec-chat.jsonl ngram)")
    rows+=("$(bench "$BIG-ngram-chat" "$BIG" "$GEN_BIG" bench/spec-chat.jsonl ngram)")
    rows+=("$(bench "$BIG-draft-chat" "$BIG" "$GEN_BIG" bench/spec-chat.jsonl draft "$SMALL")")
fi
# served SPEC CMD...: CMD's output, run against `suanli serve --spec SPEC` on the small model.
served() {
    local spec=$1 port pid res
    shift
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    "$BIN" --threads "$THREADS" serve --model "$SMALL" --port "$port" --max-batch "$N" \
        --spec "$spec" 2>"$out/serve-$spec.log" &
    pid=$!
    python3 scripts/wait-http.py "$port" /ready
    res=$("$@" --url "http://127.0.0.1:$port")
    kill "$pid"
    wait "$pid" || true
    echo "$res"
}
med() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
# row NAME KIND OFF-FIGURES ON-FIGURES UNIT: the medians' ratio.
row() {
    local off on
    off=$(echo "$3" | med)
    on=$(echo "$4" | med)
    printf '%-40s %-10s %7s  %s' "$1" "$2" "$(python3 -c "print(f'{$on / $off:.2f}×')")" \
        "median of $ROUNDS alternating server starts: $off → $on $5"
}
if [ "$SERVE" = 1 ] && { [ -z "$ONLY" ] || [ "$ONLY" = serve ]; }; then
    declare -A tok=([off]="" [auto]="" [ngram]="") schema=([off]="" [auto]="" [ngram]="")
    # The order reverses every other round (off auto ngram, ngram auto off, …): this machine's
    # speed moves in phases of minutes, which a fixed order would meet at the same place. Each
    # start reports the median of 3 concurrent passes.
    for r in $(seq "$ROUNDS"); do
        order="off auto ngram"
        [ $((r % 2)) = 1 ] || order="ngram auto off"
        for spec in $order; do
            v=$(served "$spec" python3 bench/serve_throughput.py --model "$SMALL" --requests "$N" \
                --max-tokens "$TOKENS" --ban 151643,151645 --rounds 3 --label "$spec" |
                python3 -c 'import json, sys; d = json.load(sys.stdin); print("%.1f %s" % (d["concurrent_tok_s"], d["answers_equal"]))')
            echo "== serve round $r, --spec $spec: ${v% *} tok/s, answers equal to one at a time: ${v#* }" >&2
            tok[$spec]="${tok[$spec]} ${v% *}"
            # One stream under a JSON schema (bench/structured_bench.py): the text the schema
            # forces is drafted.
            v=$(served "$spec" python3 bench/structured_bench.py --model "$SMALL" --streams 1 \
                --rounds 1 | awk '$1 == 1 {print $3}')
            echo "== structured round $r, --spec $spec: $v tok/s under the schema" >&2
            schema[$spec]="${schema[$spec]} $v"
        done
    done
    # auto: serve's default (drafts only under a constraint).
    for spec in auto ngram; do
        rows+=("$(row "$SMALL-serve-$N --spec $spec" "x$TOKENS" "${tok[off]}" "${tok[$spec]}" tok/s)")
        rows+=("$(row "$SMALL-json-schema --spec $spec" "1 stream" "${schema[off]}" "${schema[$spec]}" tok/s)")
    done
fi
echo
echo "speculative against plain decoding, same binary, $THREADS threads ($(date -u +%F), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs))"
printf '%s\n' "${rows[@]}"
