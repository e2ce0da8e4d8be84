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

echo "==> services for the tests"
# The local PostgreSQL, Redis and NATS when they answer (as in CI); on a fresh
# machine without them, embedded ones under .linkpulse-test/ (stop them with
# `.venv/bin/linkpulse down --state-dir .linkpulse-test`).
.venv/bin/linkpulse up --state-dir .linkpulse-test
if [ -f .linkpulse-test/env ]; then
  set -a
  . .linkpulse-test/env
  set +a
fi
export LINKPULSE_TEST_DATABASE_URL="${LINKPULSE_TEST_DATABASE_URL:-${LINKPULSE_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/test}}"
export LINKPULSE_TEST_REDIS_URL="${LINKPULSE_TEST_REDIS_URL:-${LINKPULSE_REDIS_URL:-redis://127.0.0.1:6379/0}}"
export LINKPULSE_TEST_NATS_URL="${LINKPULSE_TEST_NATS_URL:-${LINKPULSE_NATS_URL:-nats://127.0.0.1:4222}}"

echo "==> ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "==> mypy"
.venv/bin/mypy linkpulse
echo "==> dashboard unit tests (vitest: stream resume, staleness, formatting, layouts)"
(cd web && npm test --silent)
echo "==> pytest"
.venv/bin/python -m pytest "$@"
