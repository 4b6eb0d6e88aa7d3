#!/usr/bin/env bash
# squib's test command (README, .ci/run): installs what is missing (QEMU and friends, the test
# guest), then runs the whole suite: the benchmark harness in quick mode, the Python clients
# from PyPI, and last the Rust suite (unit tests, API conformance over a real Unix socket,
# end-to-end tests that boot real guests under QEMU), then the boot/snapshot/device/PCI e2e tests
# once more against the other QEMU (7.2 or 10) in a private prefix.
# Every part runs even when an earlier one failed; the script fails if any did.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/install-deps.sh
bash guest/build.sh

# The benchmark harness in quick mode (`make bench-quick`) keeps working: it prints the table
# and writes target/bench/results.json, and fails only when a figure could not be measured
# (figures are never asserted). The full run is `make bench`.
bench_status=0
make bench-quick || bench_status=$?

# Real Firecracker clients from PyPI (firecracker-python, pyrecracker) drive squib.
python_status=0
bash tests/python/run.sh || python_status=$?

# End-to-end tests boot guests under TCG: two at a time is what two cores carry well.
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-2}"
cargo_status=0
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast --test-threads "$RUST_TEST_THREADS" "$@" || cargo_status=$?
else
  cargo test --workspace --no-fail-fast "$@" || cargo_status=$?
fi

# The boot, snapshot, device, PCI and hot-plug end-to-end tests again against the other QEMU
# users have:
# Debian 12's QEMU 7.2 when the system's is the QEMU 10 of bookworm-backports (which
# install-deps picks when the machine already has QEMU 10 packages), else that QEMU 10.
# It is extracted into a private prefix beside the build, never installed over the system's
# QEMU. The rest of the suite does not depend on the QEMU version.
second_status=0
system_major="$(qemu-system-x86_64 --version | sed -n '1s/^QEMU emulator version \([0-9]*\)\..*/\1/p')"
if [ "${system_major:-0}" -ge 8 ]; then SECOND_SUITE=bookworm; else SECOND_SUITE=bookworm-backports; fi
SECOND_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/qemu-$SECOND_SUITE"
if SECOND_QEMU="$(bash scripts/private-qemu.sh "$SECOND_SUITE" "$SECOND_DIR")"; then
  "$SECOND_QEMU" --version | head -1
  export SQUIB_QEMU="$SECOND_QEMU"
  if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast --test-threads "$RUST_TEST_THREADS" \
      -E 'package(squib-qemu) | package(squib-cpu-template) | binary_id(squib::e2e_boot)
        | binary_id(squib::e2e_snapshot) | binary_id(squib::e2e_devices) | binary_id(squib::e2e_pci)
        | binary_id(squib::e2e_hotplug)' || second_status=$?
  else
    { cargo test --no-fail-fast -p squib-qemu -p squib-cpu-template &&
      cargo test --no-fail-fast -p squib --test e2e_boot --test e2e_snapshot --test e2e_devices \
        --test e2e_pci --test e2e_hotplug; } ||
      second_status=$?
  fi
  unset SQUIB_QEMU
else
  second_status=$?
fi

if [[ $cargo_status -ne 0 || $python_status -ne 0 || $bench_status -ne 0 || $second_status -ne 0 ]]; then
  echo "scripts/test.sh: cargo tests exit $cargo_status, Python client tests exit $python_status, bench-quick exit $bench_status, second-QEMU ($SECOND_SUITE) e2e exit $second_status" >&2
  exit 1
fi
