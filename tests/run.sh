#!/usr/bin/env bash
# The test command: builds two virtual environments and runs the suite in both.
#   .venv         the newest transformers the project allows: every test
#   .venv-oldest  the oldest transformers it declares: the model tests (-m model)
# torch comes first and pinned, so pip never swaps in a multi-GB CUDA build: set TORCH_SPEC to change
# it (e.g. TORCH_SPEC=torch on a GPU machine). Extra arguments go to both pytest runs.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
oldest=$(sed -n 's/.*"transformers>=\([0-9.]*\).*/\1/p' pyproject.toml)

make_env() {  # make_env VENV [extra requirement...]
    local venv=$1; shift
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "$TORCH_SPEC"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check ".[dev]" "$@"
    # A plain (non-editable) install of this checkout, rebuilt on every run.
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps --force-reinstall .
}

make_env .venv
make_env .venv-oldest "transformers==$oldest"
echo "== newest: transformers $(.venv/bin/python -c 'import transformers; print(transformers.__version__)')"
.venv/bin/pytest -p no:cacheprovider "$@"
echo "== oldest: transformers $oldest, model tests"
.venv-oldest/bin/pytest -p no:cacheprovider -m model "$@"
