# squib's benchmarks: squib against its floor, every figure a ratio measured in the same run.
#
#   make release      squib and jailer as shipped (statically linked, see below)
#   make bench        full run (for people): prints the table, writes $(BENCH_JSON)
#   make bench-quick  few iterations, one boot of each kind (what CI runs): same table and JSON,
#                     fails when a figure could not be measured; figures are never asserted
#   make soak         1 M mixed API requests against a running VM (not in CI)
#   make fuzz         the fuzz targets of fuzz/, FUZZ_SECONDS each (not in CI)
#
# Guests run under TCG unless SQUIB_ACCEL says otherwise. Extra flags: BENCH_ARGS="--only api".

CARGO ?= cargo
TARGET_DIR := $(if $(CARGO_TARGET_DIR),$(CARGO_TARGET_DIR),target)
BENCH := $(TARGET_DIR)/release/squib-bench
BENCH_JSON ?= $(TARGET_DIR)/bench/results.json
BENCH_ARGS ?=
export SQUIB_ACCEL ?= tcg

FUZZ_SECONDS ?= 60
SOAK_ARGS ?=

.PHONY: release bench bench-quick bench-build fuzz soak

# squib and jailer as shipped: glibc linked statically (`+crt-static`, a static PIE), so exec
# maps no shared libraries and runs no dynamic loader: ~1 MiB less resident memory and a
# faster start (`make bench`). Passed to these binaries' final link only (`cargo rustc`):
# in RUSTFLAGS it would also reach proc-macros, which cannot be static. Neither binary uses
# NSS or dlopen (the static link would warn).
# Its ~7,400 relative relocations are packed (`-z pack-relative-relocs`, DT_RELR, which
# glibc >= 2.36 applies in a static PIE too): 2 KiB instead of a 174 KiB table that the
# start-up read, so ~128 KiB less resident memory at idle (median of 6 starts, 3.85 vs 3.98 MiB).
STATIC := -C target-feature=+crt-static -C link-arg=-Wl,-z,pack-relative-relocs

release:
	$(CARGO) rustc --release -p squib --bin squib -- $(STATIC)
	$(CARGO) rustc --release -p squib --bin jailer -- $(STATIC)

bench-build: release
	$(CARGO) build --release -p squib-bench

bench: bench-build
	$(BENCH) --out $(BENCH_JSON) $(BENCH_ARGS)

bench-quick: bench-build
	$(BENCH) --quick --out $(BENCH_JSON) $(BENCH_ARGS)

# Every fuzz target (fuzz/, cargo-fuzz) for FUZZ_SECONDS each, niced; prints executions and
# crashes per target. Not part of CI.
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) bash fuzz/run.sh

# The soak benchmark: 1 M mixed API requests over 64 connections against a running VM; fails on
# an unexpected answer or squib's RSS growing by 1 MiB or more. Not part of CI.
soak: bench-build
	nice -n 10 $(BENCH) --only soak $(SOAK_ARGS)
