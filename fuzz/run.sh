#!/usr/bin/env bash
# Runs every fuzz target (or those named) for FUZZ_SECONDS each, niced, starting from the
# committed seeds plus the corpus of earlier runs, and prints executions and crashes per target.
# Needs cargo-fuzz (`cargo install cargo-fuzz`); the stable toolchain is enough, with
# RUSTC_BOOTSTRAP=1 for the flags libFuzzer's instrumentation uses.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
SECONDS_EACH="${FUZZ_SECONDS:-60}"
TARGETS=("$@")
[ "${#TARGETS[@]}" -gt 0 ] || TARGETS=(api_request mmds_http mmds_frames snapshot_state config_file qmp_reply)
export RUSTC_BOOTSTRAP=1
# No sanitizer: squib's parsers are safe Rust, so a panic is what the fuzzer looks for, and
# the uninstrumented build runs several times faster.
FUZZ=(cargo fuzz run --release --sanitizer none)
nice -n 19 cargo fuzz build --release --sanitizer none ||
  { echo "fuzz: the targets do not build" >&2; exit 1; }
summary=()
status=0
for t in "${TARGETS[@]}"; do
  mkdir -p "corpus/$t"
  cp -n seeds/"$t"/* "corpus/$t/" 2>/dev/null || true
  log="$(mktemp)"
  if ! nice -n 19 "${FUZZ[@]}" "$t" "corpus/$t" -- -max_total_time="$SECONDS_EACH" \
      -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 >"$log" 2>&1; then
    status=1
    tail -40 "$log" >&2
  fi
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
  crashes="$(ls "artifacts/$t" 2>/dev/null | grep -c -e '^crash-' -e '^timeout-' -e '^oom-' || true)"
  summary+=("$(printf '%-16s %12s executions  %s crash/timeout/oom artifacts' "$t" "${execs:-?}" "$crashes")")
  rm -f "$log"
done
printf '%s\n' "${summary[@]}"
exit "$status"
