#!/usr/bin/env bash
# Create .venv if missing and install raydetect with its dependencies (idempotent, quiet).
# Sourced by scripts/demo.sh, scripts/reproduce.sh and scripts/test.sh; leaves the venv activated.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON_BIN=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PYTHON_BIN --version)"
  "$PYTHON_BIN" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
quiet() { "$@" >>.venv/setup.log 2>&1 || { tail -n 25 .venv/setup.log >&2; return 1; }; }
stamp=.venv/.raydetect-installed
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing dependencies into .venv (the first run takes a few minutes; log: .venv/setup.log)"
  quiet python -m pip install --upgrade pip
  if ! python -c "import torch, torchvision" 2>/dev/null; then
    # This pin installs from local wheels on the project's machines; elsewhere, take the index's build.
    quiet pip install "torch==2.14.1" "torchvision==0.29.1" || quiet pip install torch torchvision
  fi
  quiet pip install -e ".[dev]"
  # Test-only; --no-deps because its pin requests~=2.25 would downgrade Ray's (see pyproject.toml).
  quiet pip install --no-deps "torchattacks>=3.5"
  echo "$want" >"$stamp"
fi
