#!/usr/bin/env bash
# squib's test command (README, .ci/run): installs what is missing (QEMU and friends, the test
# guest), then runs the whole suite: unit tests, API conformance over a real Unix socket, and
# end-to-end tests that boot real guests under QEMU.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/install-deps.sh
bash guest/build.sh

# End-to-end tests boot guests under TCG: two at a time is what two cores carry well.
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-2}"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast --test-threads "$RUST_TEST_THREADS" "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi
