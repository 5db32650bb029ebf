# The two commands of the README: `make demo` (the local demo stack) and `make test` (every test).
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: deps test lint images demo static bench-webhook bench-agent bench-server bench-sessions

deps:
	bash scripts/install-deps.sh

# The static (musl) release builds compile in a cache outside the work tree, so a fresh clone (CI's
# too) reuses the dependency graph compiled for musl on this machine; see scripts/build-static.sh.
export LUMIE_STATIC_BUILD_DIR ?= $(or $(HOME),/root)/.cache/lumie-coder/static-target

# cargo-deny: licences, duplicate versions and sources of every crate (deny.toml), offline;
# install-deps builds it once into ~/.cache/lumie-coder/cargo-tools.
CARGO_DENY ?= $(or $(HOME),/root)/.cache/lumie-coder/cargo-tools/bin/cargo-deny

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO_DENY) --frozen check licenses bans sources

## OCI images lumie-server and lumie-webhook (no daemon, no registry): the static binaries, then
## target/images/lumie-{server,webhook}.tar with their digests and SBOMs.
images: deps
	bash scripts/build-static.sh
	bash scripts/build-images.sh

## Every test: formatting, lints, unit and table tests, end-to-end tests on the local cluster.
test: deps lint
	$(CARGO) test --workspace --no-fail-fast

## The local demo stack: cluster, webhook, server with SQLite, one workspace moving to running.
# One build of everything the demo runs (features resolved once, so nothing is rebuilt after it),
# then the demo binary itself.
demo: deps
	$(CARGO) build --release -p lumie-agent -p lumie-server -p lumie-webhook -p lumie-cli -p lumie-tests --bin lumie-agent --bin lumie --bin lumie-server --bin lumie-webhook --bin lumie-demo --bin lumie-stand-in-apps
	"$${CARGO_TARGET_DIR:-target}/release/lumie-demo"

## Static, stripped release binaries in target/static/linux-{amd64,arm64}/ (scripts/build-static.sh
## --help); `make demo` serves the static agents once they are built.
static: deps
	bash scripts/build-static.sh

## Benchmarks: commands that print figures and ratios against a baseline measured in the same run.
bench-webhook:
	$(CARGO) run --release -p lumie-webhook --bin lumie-webhook-bench

bench-agent:
	bash scripts/install-bench-deps.sh
	$(CARGO) bench -p lumie-agent

bench-server:
	$(CARGO) bench -p lumie-server --bench harness_latency
	$(CARGO) bench -p lumie-server --bench postgres_throughput
	$(CARGO) bench -p lumie-server --bench dashboard_render

# Port-forward throughput through server + agent vs direct, and the terminal's keystroke round trip.
bench-sessions:
	$(CARGO) bench -p lumie-tests --bench sessions
