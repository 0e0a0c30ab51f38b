#!/usr/bin/env bash
# README command 1: set up, then run the main job on the embedded default (SQLite, FAISS files
# on disk, CPU unless a GPU is present). Extra arguments go to `rsir demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/rsir demo "$@"
