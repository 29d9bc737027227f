#!/usr/bin/env bash
# Installs what the tests need: Debian's chromium, redis-server, prometheus (for
# promtool and a real scrape) and janus (the load tester's Janus client), and a Python venv with aiortc and the deployment-file
# validators (kubernetes-validate, check-jsonschema).
# Idempotent; safe to run on every CI run.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${SFU_TEST_VENV:-$root/target/test-venv}"

need_apt=()
# jemalloc (the nodes' allocator) is built from source with make.
command -v make >/dev/null 2>&1 || need_apt+=(make)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
command -v janus >/dev/null 2>&1 || need_apt+=(janus)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  echo "setup: installing ${need_apt[*]} from Debian"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import aiortc, av, numpy, websockets, kubernetes_validate, check_jsonschema' >/dev/null 2>&1; then
  echo "setup: creating $venv with aiortc"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$root/tests/interop/requirements.txt"
fi
echo "setup: chromium $(chromium --version 2>/dev/null | awk '{print $2}'), $(redis-server --version | awk '{print $1, $3}'), promtool $(promtool --version 2>&1 | awk 'NR==1 {print $3}'), aiortc $("$venv/bin/python" -c 'import aiortc; print(aiortc.__version__)')"
