#!/bin/sh
# Entry point of the rsir images. `exec` hands PID 1 to the server itself, so `docker stop`
# (SIGTERM) reaches uvicorn and it drains requests instead of being killed after the timeout.
#   api     migrate the metadata DB to head, then serve HTTP (the one place migrations run)
#   worker  run the inference/job worker
#   *       run the given command (e.g. `rsir index ...`, `sh`)
set -eu

case "${1:-api}" in
    api)
        shift || true
        rsir db upgrade
        exec rsir serve --host "${RSIR_HOST:-0.0.0.0}" --port "${RSIR_PORT:-8000}" "$@"
        ;;
    worker)
        shift
        exec rsir worker "$@"
        ;;
    *)
        exec "$@"
        ;;
esac
