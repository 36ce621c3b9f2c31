# Ferry — the two set-up commands are `make run` and `make test`; both install what is missing.
SHELL := /bin/bash
.DEFAULT_GOAL := help

NATS_VERSION := 2.15.1
TOOLS        := $(CURDIR)/.ferry/tools
NATS_SERVER  := $(TOOLS)/bin/nats-server
export FERRY_NATS_SERVER := $(NATS_SERVER)
# Bounded fault-injection trials in `make test`; raise locally (FERRY_TRIALS=200 make test).
export FERRY_TRIALS ?= 3
# Seconds of fuzzing per parser (configuration, settings) in `make test`; FERRY_FUZZ_SEED repeats a run.
export FERRY_FUZZ_SECS ?= 10
# Files in the large-run test (local_transfer.rs); FERRY_BIG_RUN_FILES=1000000 for the long suite.
export FERRY_BIG_RUN_FILES ?= 100000
# Trials of `make fault-suite` (not exported: `make test` keeps the suite's short default).
FERRY_FAILOVER_TRIALS ?= 200

.PHONY: help deps peers run test bench fault-suite lint build-release compose-up compose-down compose-ha-up compose-ha-down

help:
	@echo "make run    - install what is missing, start a single-node Ferry with an example task"
	@echo "make test   - install what is missing, run every test (cargo nextest)"
	@echo "make bench  - run the benchmarks (transfer, failover time) and write docs/BENCHMARKS.md"
	@echo "make fault-suite - run the $(FERRY_FAILOVER_TRIALS)-trial failover fault-injection suite (root), update docs/BENCHMARKS.md's failover section"
	@echo "make lint   - rustfmt and clippy"
	@echo "make compose-up    - build the image, start one node with NATS, Prometheus and Grafana (docker-compose; set compose/.env first)"
	@echo "make compose-down  - stop it (volumes are kept; docker-compose -f $(COMPOSE_FILE) down -v removes them)"
	@echo "make compose-ha-up   - the same for a hot-standby pair on a three-server NATS cluster"
	@echo "make compose-ha-down - stop the pair (volumes are kept)"

# --- dependencies ---------------------------------------------------------------------------
deps: $(NATS_SERVER) .ferry/tools/.nextest
	@scripts/install-deps.sh netns

# The real servers the remote-host tests and benchmarks talk to (sshd, vsftpd, smbd, moto, Azurite).
peers: deps
	@scripts/install-deps.sh peers $(TOOLS)
	@scripts/install-deps.sh observe $(TOOLS)

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
# RUST_LIB_BACKTRACE=0: a failing test's error is its last lines, not an anyhow backtrace (CI
# shows the tail of the output); panics still print theirs when RUST_BACKTRACE is set.
test: peers
	cargo build --workspace --bins
	RUST_LIB_BACKTRACE=0 cargo nextest run --workspace --no-fail-fast
	@scripts/check-no-secrets.sh target/nextest/default/junit.xml tests/known-secrets.txt

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

# --- deploy with docker-compose (README.md, "Deploy with docker-compose") ------------------------
COMPOSE         ?= docker-compose
COMPOSE_FILE    := compose/docker-compose.yml
COMPOSE_HA_FILE := compose/docker-compose-ha.yml

compose/.env:
	@echo "compose/.env is missing: cp compose/.env.example compose/.env and set the passwords in it" >&2; exit 1

compose-up: compose/.env
	$(COMPOSE) -f $(COMPOSE_FILE) up -d --build

compose-down:
	$(COMPOSE) -f $(COMPOSE_FILE) down

compose-ha-up: compose/.env
	$(COMPOSE) -f $(COMPOSE_HA_FILE) up -d --build

compose-ha-down:
	$(COMPOSE) -f $(COMPOSE_HA_FILE) down

# --- bench ------------------------------------------------------------------------------------
# The failover runs (tests/tests/failover_faults.rs; root, network namespaces) last longer than the
# 5 minutes per test of the default nextest profile, so they run under `failover-long`
# (.config/nextest.toml). The command lines are quoted in docs/BENCHMARKS.md (NEXTEST_FAILOVER* in
# ferry-bench.rs): keep in step.
NEXTEST_FAILOVER := cargo nextest run -p ferry-tests --test failover_faults
NEXTEST_FAILOVER_PROFILE := --no-capture -P failover-long

# Failover time is measured on debug builds (the test's own profile): it is dominated by the 5 s
# lease TTL, not by CPU. The services' binaries must be built before the test starts them.
bench: peers build-release
	@scripts/install-deps.sh bench
	cargo build --release -p ferry-tests --bin ferry-bench
	cargo build --workspace --bins
	rm -f target/bench-failover.json
	FERRY_FAILOVER_BENCH_OUT=target/bench-failover.json $(NEXTEST_FAILOVER) failover_latency $(NEXTEST_FAILOVER_PROFILE)
	target/release/ferry-bench --out docs/BENCHMARKS.md --failover-latency target/bench-failover.json \
	  $$([ -f target/failover-suite.json ] && echo --fault-suite target/failover-suite.json)
	cargo bench -p ferry-processes --bench pgp -- --out $(CURDIR)/docs/BENCHMARKS.md
	FERRY_STANDBY_BENCH_OUT=$(CURDIR)/docs/BENCHMARKS.md cargo nextest run -p ferry-tests --test standby_mirror replication_lag_and_site_failover_rto --no-capture

# The fault-injection suite at full length, then only the failover section of docs/BENCHMARKS.md
# is rewritten (the transfer figures stay those of the last `make bench`). Debug builds, as in
# `make test`; `cargo build --workspace --bins` also builds target/debug/ferry-bench.
fault-suite: deps
	cargo build --workspace --bins
	rm -f target/failover-suite.json
	FERRY_FAILOVER_TRIALS=$(FERRY_FAILOVER_TRIALS) FERRY_FAILOVER_SUITE_OUT=target/failover-suite.json \
	  $(NEXTEST_FAILOVER) exactly_one_node_is_active_under_faults $(NEXTEST_FAILOVER_PROFILE)
	target/debug/ferry-bench --failover-only --out docs/BENCHMARKS.md --fault-suite target/failover-suite.json \
	  $$([ -f target/bench-failover.json ] && echo --failover-latency target/bench-failover.json)
