#!/usr/bin/env bash
# Install everything and run the full check: ruff, mypy and the whole test suite
# (unit, integration against the real PostgreSQL/Redis/NATS, the TimescaleDB
# conformance lane, end-to-end). Extra arguments go to pytest.
# Usage: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install.sh
if [ -f tests/timescale/install.sh ]; then
  bash tests/timescale/install.sh
fi

echo "==> ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "==> mypy"
.venv/bin/mypy linkpulse
echo "==> pytest"
.venv/bin/python -m pytest "$@"
