#!/usr/bin/env bash
# The main job on embedded defaults: builds and starts an edge serving the demo page.
# Extra arguments go to edge-sfu (see `edge-sfu --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --release --locked -p edge-sfu -- "$@"
