#!/usr/bin/env bash
# The main job on embedded defaults: a core and three edges on loopback, each edge
# serving the demo page. Extra arguments go to `loadtest cluster` (see --help), e.g.
# `--cores 2 --redis` for a fleet of two cores sharing channels through a local Redis.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
if ! command -v make >/dev/null 2>&1; then
  # jemalloc, the nodes' allocator, is built from source with make.
  echo "run-demo: installing make from Debian to build jemalloc"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends make >/dev/null
fi
for arg in "$@"; do
  if [ "$arg" = "--redis" ] && ! command -v redis-server >/dev/null 2>&1; then
    echo "run-demo: installing redis-server from Debian for the local fleet"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends redis-server >/dev/null
  fi
done
exec cargo run --release --locked -p loadtest -- cluster "$@"
