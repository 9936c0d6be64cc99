#!/usr/bin/env bash
# The chat page at `/` in headless Chromium against a real `suanli serve` (tests/web/): answer,
# markdown, stop, Enter while streaming, IME composition, regenerate, edit, error and retry,
# reload, a Chinese browser, a phone-sized window. Installs Debian's chromium and chromedriver
# (apt) and Selenium (.venv-web) the first time. Prints a cargo-style "test result:" line.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV_WEB:-.venv-web}
BIN=${SUANLI_BIN:-target/release/suanli}
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    # Without a browser the test cannot run: say so loudly (counted as neither passed nor
    # failed) rather than fail everything else in CI for a missing package.
    if ! { apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; }; then
        echo "web test: SKIPPED — cannot install Debian's chromium and chromium-driver"
        echo "test result: ok. 0 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out (chat page: no browser)"
        exit 0
    fi
fi
. scripts/pyenv.sh
pyenv "$VENV" selenium "selenium==4.51.0"
[ -x "$BIN" ] || cargo build --release --locked
model=$("$BIN" pull smollm2-135m 2>/dev/null | tail -1)
[ -f "$model" ] || { echo "web test: cannot pull smollm2-135m"; exit 1; }
exec "$PY" tests/web/page_test.py "$BIN" "$model"
