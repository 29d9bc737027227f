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
step "unit, integration, interop and abuse tests"
cargo test --workspace --locked
step "every fuzz target for ${SFU_FUZZ_SECONDS:-5} s (a crash fails the run)"
scripts/fuzz.sh "${SFU_FUZZ_SECONDS:-5}"
