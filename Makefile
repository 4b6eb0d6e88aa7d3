# squib's benchmarks: squib against its floor, every figure a ratio measured in the same run.
#
#   make bench        full run (for people): prints the table, writes $(BENCH_JSON)
#   make bench-quick  few iterations, one boot of each kind (what CI runs): same table and JSON,
#                     fails when a figure could not be measured; figures are never asserted
#
# Guests run under TCG unless SQUIB_ACCEL says otherwise. Extra flags: BENCH_ARGS="--only api".

CARGO ?= cargo
TARGET_DIR := $(if $(CARGO_TARGET_DIR),$(CARGO_TARGET_DIR),target)
BENCH := $(TARGET_DIR)/release/squib-bench
BENCH_JSON ?= $(TARGET_DIR)/bench/results.json
BENCH_ARGS ?=
export SQUIB_ACCEL ?= tcg

.PHONY: bench bench-quick bench-build

bench-build:
	$(CARGO) build --release -p squib -p squib-bench

bench: bench-build
	$(BENCH) --out $(BENCH_JSON) $(BENCH_ARGS)

bench-quick: bench-build
	$(BENCH) --quick --out $(BENCH_JSON) $(BENCH_ARGS)
