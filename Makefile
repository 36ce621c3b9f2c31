# Ferry — the two set-up commands are `make run` and `make test`; both install what is missing.
SHELL := /bin/bash
.DEFAULT_GOAL := help

NATS_VERSION := 2.15.1
TOOLS        := $(CURDIR)/.ferry/tools
NATS_SERVER  := $(TOOLS)/bin/nats-server
export FERRY_NATS_SERVER := $(NATS_SERVER)
# Bounded fault-injection trials in `make test`; raise locally (FERRY_TRIALS=200 make test).
export FERRY_TRIALS ?= 3

.PHONY: help deps run test bench lint build-release

help:
	@echo "make run    - install what is missing, start a single-node Ferry with an example task"
	@echo "make test   - install what is missing, run every test (cargo nextest)"
	@echo "make bench  - run the benchmarks and write docs/BENCHMARKS.md"
	@echo "make lint   - rustfmt and clippy"

# --- dependencies ---------------------------------------------------------------------------
deps: $(NATS_SERVER) .ferry/tools/.nextest

$(NATS_SERVER):
	@scripts/install-deps.sh nats $(NATS_VERSION) $(TOOLS)

.ferry/tools/.nextest:
	@scripts/install-deps.sh nextest
	@mkdir -p .ferry/tools && touch $@

# --- run --------------------------------------------------------------------------------------
build-release:
	cargo build --release --bins

run: deps build-release
	@scripts/run-node.sh

# --- test -------------------------------------------------------------------------------------
test: deps
	cargo build --workspace --bins
	cargo nextest run --workspace --no-fail-fast

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

# --- bench ------------------------------------------------------------------------------------
bench: deps build-release
	@scripts/install-deps.sh bench
	cargo build --release -p ferry-tests --bin ferry-bench
	target/release/ferry-bench --out docs/BENCHMARKS.md
