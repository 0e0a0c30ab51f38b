#!/usr/bin/env bash
# Create .venv and install rsir into it (with the test tools when given --dev).
# Needs only Python 3.11 and pip's access to the package registry; torch and torchvision are
# pinned (torch==2.14.1, torchvision==0.29.1) in pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
[[ "${1:-}" == "--dev" ]] && extras="[dev]"
python=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [[ ! -x .venv/bin/python ]]; then
  echo "creating .venv with $($python --version)"
  "$python" -m venv .venv
fi
stamp=".venv/.installed${extras}"
if [[ ! -f "$stamp" || pyproject.toml -nt "$stamp" ]]; then
  echo "installing rsir${extras} into .venv (first time: a few minutes)"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${extras}" \
    2> >(grep -v "is neither a file nor a directory" >&2)
  touch "$stamp"
fi

# The web page's map library (Leaflet), from the npm registry into service/vendor/node_modules
# (git-ignored; served by service/web.py), pinned by service/vendor/package-lock.json.
vendor=service/vendor
if [[ ! -f "$vendor/node_modules/.installed" || "$vendor/package-lock.json" -nt "$vendor/node_modules/.installed" ]]; then
  if command -v npm >/dev/null; then
    echo "installing the web page's map library (npm ci in $vendor)"
    if npm ci --prefix "$vendor" --omit=dev --no-audit --no-fund --loglevel=error; then
      touch "$vendor/node_modules/.installed"
    else
      echo "npm ci failed: the web page will show no map until this script succeeds" >&2
    fi
  else
    echo "npm not found: the web page will show no map (install Node.js, then rerun this script)" >&2
  fi
fi
