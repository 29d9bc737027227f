#!/usr/bin/env bash
# The project's test command: installs what the tests need, then the lint gate, every
# test, and every fuzz target briefly. CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n== test.sh: %s\n' "$*"; }
step "installing test dependencies (Chromium, aiortc venv)"
bash scripts/setup-test-deps.sh
step "formatting and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
step "unit, integration, interop, fleet and abuse tests"
rm -f target/tmp/fleet-report.txt
cargo test --workspace --locked
step "measured by the fleet tests"
cat target/tmp/fleet-report.txt 2>/dev/null || echo "(no fleet report)"
step "every fuzz target for ${SFU_FUZZ_SECONDS:-5} s (a crash fails the run)"
scripts/fuzz.sh "${SFU_FUZZ_SECONDS:-5}"
