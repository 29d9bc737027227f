#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60) from the committed seed corpora
# (fuzz/corpus/<target>), with cargo-fuzz on the nightly toolchain. New inputs and any
# crash go under fuzz/target/fuzz-work/<target>/; a crash makes this script fail.
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
shift || true
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz: the nightly toolchain is needed (rustup toolchain install nightly)" >&2
  exit 1
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --locked --version 0.13.2
fi
cd fuzz
echo "fuzz: building the targets (nightly, AddressSanitizer)"
cargo +nightly fuzz build
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)
summary=target/fuzz-work/summary.txt
mkdir -p target/fuzz-work
: > "$summary"
status=0
for t in "${targets[@]}"; do
  work="target/fuzz-work/$t"
  mkdir -p "$work/corpus" "$work/artifacts"
  echo "fuzz: $t for ${secs}s"
  seeds=()
  [ -d "corpus/$t" ] && seeds=("corpus/$t")
  if cargo +nightly fuzz run "$t" "$work/corpus" "${seeds[@]}" -- \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="$work/artifacts/" >"$work/log.txt" 2>&1; then
    result="ok"
  else
    result="FAILED (see fuzz/$work/log.txt and fuzz/$work/artifacts/)"
    status=1
    tail -n 40 "$work/log.txt" >&2
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$work/log.txt" | grep -o '[0-9]*$' | tail -n 1)
  printf '%-16s %12s executions  %s\n' "$t" "${runs:-?}" "$result" | tee -a "$summary"
done
exit $status
