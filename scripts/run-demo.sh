#!/usr/bin/env bash
# The main job on embedded defaults: a core and three edges on loopback, each edge
# serving the demo page. Extra arguments go to `loadtest cluster` (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --release --locked -p loadtest -- cluster "$@"
