#!/usr/bin/env bash
# Install everything and run the main job: the local stack (NATS JetStream,
# Redis, PostgreSQL: the configured ones when they answer, embedded ones
# otherwise), migrations, the dataflow and the API, fed by the traffic
# simulator, with live numbers; it ends by checking every event was stored once.
# Extra arguments go to `linkpulse demo` (e.g. --duration 10m --rate 1000).
# Usage: bash scripts/run.sh [demo options]
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install.sh
exec .venv/bin/linkpulse demo "$@"
