# Ember's entry points. `make run` and `make test` set up everything they
# need on a fresh Debian 12 host (packages, guest kernel, base rootfs),
# idempotently and cached under build/.

SHELL := /bin/bash
DATA_DIR ?= build/data
AGENT_TARGET := x86_64-unknown-linux-gnu
AGENT := target/$(AGENT_TARGET)/guest/ember-agent
# The test-only agent that attacks its host (guest/agent/src/hostile.rs),
# in a target dir of its own so it never replaces the real one.
HOSTILE_AGENT := target/hostile/$(AGENT_TARGET)/guest/ember-agent

export EMBER_DATA_DIR := $(abspath $(DATA_DIR))
export EMBER_ASSETS_DIR := $(EMBER_DATA_DIR)/assets
export EMBER_AGENT_BIN := $(abspath $(AGENT))
export EMBER_HOSTILE_AGENT_BIN := $(abspath $(HOSTILE_AGENT))

.PHONY: run demo-vm test soak fuzz bench kvm-check deps agent hostile-agent bins setup lint unit-test vm-test clean

## run: start emberd, build examples/hello-http through the API (live
## build log), show the image
run: setup bins
	scripts/demo.sh

## demo-vm: the foundation demo: boot, snapshot, restore, state survives
demo-vm: setup
	cargo run --quiet --release -p ember -- demo

## test: unit tests, the tests that boot real guests, and the API tests
## (AWS CLI and boto3 against a real emberd); `make lint` is apart (run it
## before committing): its check build of the whole workspace would cost
## the suite minutes it does not have
test: setup bins hostile-agent
	scripts/run-tests.sh

## soak: the full soak (100 suspend/resume cycles with state checked after
## each, 300 runs/terminates, emberd's RSS and fds flat); make test runs a
## short one
soak: setup bins
	scripts/setup-venv.sh
	EMBER_SOAK_CYCLES=100 EMBER_SOAK_RUNS=300 build/venv/bin/python -m pytest -q -p no:cacheprovider tests/api/test_soak.py
	EMBER_RECOVERY_VMS=100 build/venv/bin/python -m pytest -q -s -p no:cacheprovider tests/api/test_recovery_many.py

## fuzz: run every fuzz target (fuzz/) for FUZZ_SECONDS seconds each
## (default 60); `make fuzz FUZZ_SECONDS=3600 FUZZ_TARGETS="zip oci_layer"`
fuzz: deps
	FUZZ_SECONDS=$(or $(FUZZ_SECONDS),60) scripts/fuzz.sh $(FUZZ_TARGETS)

## bench: print one JSON object per benchmark result
bench: setup hostile-agent
	cargo run --quiet --release -p ember-bench

## kvm-check: on a host with hardware KVM, the guest and API tests and the
## benchmarks with EMBER_ACCEL=kvm; elsewhere it says why not (exit 2)
kvm-check: deps
	scripts/kvm-check

deps:
	@scripts/install-deps.sh

# The agent is PID 1 in a guest with no libc: link it statically.
agent: deps
	RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --profile guest -p ember-agent --target $(AGENT_TARGET)

hostile-agent: deps
	RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --profile guest -p ember-agent --features hostile --target $(AGENT_TARGET) --target-dir target/hostile

# emberd and the ember CLI, which the API tests run as real processes.
bins: deps
	cargo build --quiet --release -p emberd -p ember

setup: agent
	cargo run --quiet --release -p ember -- setup >/dev/null

lint: deps
	cargo fmt --all -- --check
	cargo clippy --quiet --release --workspace --all-targets -- -D warnings
	cargo clippy --quiet --release -p ember-agent --all-targets --features hostile -- -D warnings

clean:
	rm -rf build target
