# Sourced by the scripts that need Python packages (test-openai.sh, test-router.sh,
# test-deploy.sh). `pyenv VENV IMPORTS PKG...` makes PY a Python that can `import IMPORTS`
# (comma-separated), installing PKG... into the virtual environment VENV the first time; where
# Debian has no venv module it installs into VENV/site instead and exports PYTHONPATH.
# BIN_DIR is where the packages' commands are (VENV/bin or VENV/site/bin).
pyenv() {
    local venv=$1 imports=$2
    shift 2
    PY="$venv/bin/python"
    BIN_DIR="$venv/bin"
    if [ -d "$venv/site" ]; then
        PY=python3
        BIN_DIR="$venv/site/bin"
        export PYTHONPATH="$venv/site"
    fi
    if "$PY" -c "import $imports" 2>/dev/null; then
        return
    fi
    if python3 -m venv "$venv" 2>/dev/null && "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
        "$venv/bin/python" -m pip install -q "$@"
        PY="$venv/bin/python"
        BIN_DIR="$venv/bin"
    else
        rm -rf "$venv"
        PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install -q --target "$venv/site" "$@"
        PY=python3
        BIN_DIR="$venv/site/bin"
        export PYTHONPATH="$venv/site"
    fi
}
