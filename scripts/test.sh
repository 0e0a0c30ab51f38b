#!/usr/bin/env bash
# README command 2: set up (with test tools), make sure the services the tests use are there
# (PostgreSQL on 127.0.0.1:5432, Debian's chromium for the browser test), run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev

if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  if command -v pg_ctlcluster >/dev/null && [[ -d /etc/postgresql ]]; then
    echo "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  fi
fi

# Debian's chromium (browser test) and a Compose CLI (validates docker-compose.yml; no engine
# is needed for `config`), when missing and we may install them.
missing=()
[[ -x /usr/bin/chromium ]] || missing+=(chromium)
docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null \
  || missing+=(docker-compose)
if (( ${#missing[@]} )) && command -v apt-get >/dev/null && [[ $(id -u) == 0 ]]; then
  echo "installing Debian's ${missing[*]} for the browser and compose tests"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}") \
    >/tmp/rsir-apt.log 2>&1 || echo "could not install ${missing[*]} (see /tmp/rsir-apt.log)"
fi

exec .venv/bin/python -m pytest "$@"
