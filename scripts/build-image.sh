#!/usr/bin/env bash
# Build the runtime container image (Containerfile, stage `runtime`) from the release binary and
# check it: stages target/image/rootfs (the stripped binary, the C libraries `ldd` lists, a
# passwd file), runs `podman build`, then reads the image back (`podman export`) and checks its
# files, entrypoint, user and size. As root it also runs the exported filesystem under chroot:
# `suanli serve` on SmolLM2 answers /ready and a completion, and exits 0 on SIGTERM (podman
# cannot run containers on these machines, so chroot stands in for the runtime). Installs podman
# with apt when it is missing. Prints a cargo-style "test result:" line.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${SUANLI_BIN:-target/release/suanli}
TAG=${IMAGE_TAG:-suanli:latest}
STAGE=target/image
[ -x "$BIN" ] || cargo build --release --locked
if ! command -v podman >/dev/null; then
    sudo_=""
    [ "$(id -u)" -eq 0 ] || sudo_="sudo"
    ($sudo_ apt-get update -q && $sudo_ apt-get install -y -q podman) >/dev/null 2>&1 || true
fi
if command -v podman >/dev/null && ! podman info >/dev/null 2>&1; then
    echo "image: SKIPPED — podman is installed but cannot work here: $(podman info 2>&1 | tail -1)"
    echo "test result: ok. 0 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out (container image: podman unusable)"
    exit 0
fi
if ! command -v podman >/dev/null; then
    echo "image: SKIPPED — podman is not installed and could not be"
    echo "test result: ok. 0 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out (container image: no podman)"
    exit 0
fi

rm -rf "$STAGE"
root="$STAGE/rootfs"
mkdir -p "$root/usr/bin" "$root/etc" "$root/models" "$root/tmp"
chmod 1777 "$root/tmp"
objcopy --strip-debug "$BIN" "$root/usr/bin/suanli"
# The dynamic loader and every library the binary links, at the paths it looks for them.
for lib in $(ldd "$BIN" | grep -oE '/[^ ]+'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/models:/sbin/nologin\n' > "$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$root/etc/group"
cp Containerfile "$STAGE/"
podman build -q --target runtime -t "$TAG" -f "$STAGE/Containerfile" "$STAGE" >/dev/null

passed=0
failed=0
check() { if eval "$2"; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "image: FAILED: $1"; fi; }

# The image as a filesystem.
out="$STAGE/exported"
mkdir -p "$out"
cid=$(podman create "$TAG")
podman export "$cid" | tar -x -C "$out" 2>/dev/null || podman export "$cid" | tar -x --no-same-owner -C "$out"
podman rm "$cid" >/dev/null
files=$(cd "$out" && find . -type f | sort)
echo "image $TAG: $(echo "$files" | wc -l) files, $(du -sm "$out" | cut -f1) MiB:"
echo "$files" | sed 's/^/  /'
cfg=$(podman image inspect "$TAG" --format '{{json .Config.Entrypoint}} {{json .Config.Cmd}} {{.Config.User}} {{json .Config.Env}}')
echo "config: $cfg"
check "the binary and its libraries are all there" '[ -x "$out/usr/bin/suanli" ] && [ -e "$out/lib64/ld-linux-x86-64.so.2" ]'
check "no shell, no package manager, no Python" '! echo "$files" | grep -qE "/(sh|bash|apt|dpkg|python3?)$"'
check "entrypoint suanli, serve by default, uid 65532, SUANLI_HOME=/models" \
    'echo "$cfg" | grep -q "\[\"/usr/bin/suanli\"\] \[\"serve\",\"--host=0.0.0.0\",\"--port=8000\"\] 65532:65532" && echo "$cfg" | grep -q SUANLI_HOME=/models'
check "smaller than 64 MiB" '[ "$(du -sm "$out" | cut -f1)" -lt 64 ]'

if [ "$(id -u)" -eq 0 ]; then
    # The runtime contract through the image's own filesystem: its loader and libraries only.
    model=$("$BIN" pull smollm2-135m 2>/dev/null | tail -1)
    mkdir -p "$out/models/models"
    cp "$model" "$out/models/models/"
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    log=$(mktemp)
    SUANLI_HOME=/models chroot --userspec=65532:65532 "$out" /usr/bin/suanli --threads 1 serve \
        --model "/models/models/$(basename "$model")" --port "$port" --ctx 1024 --kv-memory 64MiB >"$log" 2>&1 &
    pid=$!
    ok=0
    if python3 scripts/wait-http.py "$port" /ready; then
        answer=$(python3 - "$port" <<'PY'
import sys, urllib.request
body = b'{"prompt": "The capital of France is", "max_tokens": 4, "temperature": 0}'
req = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/v1/completions", data=body,
                             headers={"Content-Type": "application/json"})
print(urllib.request.urlopen(req, timeout=120).read().decode())
PY
)
        echo "chroot serve: $answer" | cut -c1-200
        echo "$answer" | grep -q '"completion_tokens":4' && ok=1
    fi
    kill -TERM "$pid"
    code=0
    wait "$pid" || code=$?
    check "suanli serve runs from the image's files, answers, exits 0 on SIGTERM (exit $code)" '[ "$ok" -eq 1 ] && [ "$code" -eq 0 ]'
    [ "$ok" -eq 1 ] || cat "$log"
    rm -f "$log"
else
    echo "image: the chroot run needs root; skipped"
fi
echo "test result: $([ "$failed" -eq 0 ] && echo ok || echo FAILED). $passed passed; $failed failed; 0 ignored; 0 measured; 0 filtered out (container image)"
[ "$failed" -eq 0 ]
