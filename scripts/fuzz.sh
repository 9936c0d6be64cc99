#!/usr/bin/env bash
# Fuzz every target for SECONDS each (default 60) with cargo-fuzz (libFuzzer, overflow checks on,
# debug assertions on). Installs the nightly toolchain and cargo-fuzz when missing; the normal
# build needs neither. Seeds: fuzz/seeds/<target> plus the committed test fixtures; the working
# corpus lives in target/fuzz-corpus (not committed). Prints one line per target with its
# executions; exits non-zero on the first crash (the reproducer is left in fuzz/artifacts).
#   scripts/fuzz.sh [SECONDS] [TARGET ...]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-60}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(gguf safetensors tokenizer template request grammar)
skip() {
    # Not counted as passed: no "test result" line.
    echo "fuzz: SKIPPED — $1"
    exit 0
}
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    rustup toolchain install nightly --profile minimal || skip "cannot install the nightly toolchain"
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --version 0.13.2 --locked || skip "cannot install cargo-fuzz"
fi
corpus=target/fuzz-corpus
for t in "${TARGETS[@]}"; do
    mkdir -p "$corpus/$t"
    cp -n fuzz/seeds/"$t"/* "$corpus/$t"/ 2>/dev/null || true
done
cp -n tests/fixtures/spm/vocab.gguf "$corpus/gguf/spm-vocab.gguf" 2>/dev/null || true
for f in tests/fixtures/tiny/*/model.gguf; do
    cp -n "$f" "$corpus/gguf/$(basename "$(dirname "$f")").gguf" 2>/dev/null || true
done
for f in tests/fixtures/tiny/*/model.safetensors; do
    cp -n "$f" "$corpus/safetensors/$(basename "$(dirname "$f")").safetensors" 2>/dev/null || true
done
for f in tests/fixtures/tiny/*/chat_template.jinja tests/fixtures/templates/*; do
    [ -f "$f" ] && cp -n "$f" "$corpus/template/$(basename "$(dirname "$f")")-$(basename "$f")" 2>/dev/null || true
done
cargo +nightly fuzz build -O --debug-assertions 2>&1 | tail -1
# One target per core at a time (libFuzzer runs one process): the same seconds each, in less time.
jobs=$(nproc 2>/dev/null || echo 1)
logs=$(mktemp -d)
run_one() {
    local t=$1
    set +e
    cargo +nightly fuzz run -O --debug-assertions "$t" "$corpus/$t" -- \
        -max_total_time="$SECONDS_EACH" -timeout=20 -rss_limit_mb=4096 -malloc_limit_mb=2048 \
        -max_len=1048576 -print_final_stats=1 >"$logs/$t.log" 2>&1
    echo $? >"$logs/$t.rc"
}
total=0
i=0
while [ $i -lt ${#TARGETS[@]} ]; do
    batch=("${TARGETS[@]:$i:$jobs}")
    for t in "${batch[@]}"; do run_one "$t" & done
    wait
    for t in "${batch[@]}"; do
        rc=$(cat "$logs/$t.rc")
        runs=$({ grep -oE 'stat::number_of_executed_units: *[0-9]+' "$logs/$t.log" || true; } | grep -oE '[0-9]+$' | tail -1 || true)
        echo "fuzz $t: ${runs:-0} executions in ${SECONDS_EACH}s, exit $rc"
        if [ "$rc" -ne 0 ]; then
            grep -E "panicked|ERROR|error|SUMMARY|Test unit written|leak|out-of-memory|timeout" "$logs/$t.log" | head -20 || true
            rm -rf "$logs"
            exit "$rc"
        fi
        total=$((total + ${runs:-0}))
    done
    i=$((i + jobs))
done
rm -rf "$logs"
echo "fuzz: $total executions, 0 crashes"
# For .ci/run's count: each target fuzzed without a crash is a passed check.
echo "test result: ok. ${#TARGETS[@]} passed; 0 failed; 0 ignored; 0 measured; 0 filtered out (fuzz targets, $total executions)"
