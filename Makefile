# zhima-worker: the commands a developer and CI use.
CARGO ?= cargo
# Two cores: the integration tests (one binary, tests/it/) start workers and
# sandboxes; more threads than this only starve them.
TEST_THREADS ?= 4

.PHONY: run test test-unit test-integration bench lint fmt interop services build chaos fuzz

build:
	@scripts/first-build-note.sh debug/zhima-worker
	$(CARGO) build --bins

## RabbitMQ and PostgreSQL, installed and started when missing.
services:
	@scripts/ensure-services.sh

## The main job end to end on the default config (sandbox gateway, SQLite):
## needs RabbitMQ only.
run: build
	@scripts/ensure-services.sh rabbitmq
	@scripts/demo.sh

## Every test: both crypto backends, then the integration tests (tests/it/)
## against the real RabbitMQ and PostgreSQL. It builds what `make run` built
## (same profile and features), so after `make run` only the tests compile.
test: services
	@scripts/first-build-note.sh debug/deps
	$(CARGO) test --no-default-features --lib
	$(CARGO) test -- --test-threads=$(TEST_THREADS)

## Figures for the issues' targets (release build; needs RabbitMQ and PostgreSQL).
bench: services
	$(CARGO) bench

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) clippy --no-default-features --lib -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --quiet

fmt:
	$(CARGO) fmt --all

## The fault run: 3 replicas, 2 000 jobs, faults, kill -9 every few seconds,
## RabbitMQ and PostgreSQL restarted once (minutes; not part of `make test`).
## It restarts the machine's services, so it waits while test binaries run,
## and both services are left running whatever the outcome.
chaos: services
	$(CARGO) bench --bench chaos; status=$$?; \
	rabbitmqctl start_app >/dev/null 2>&1; scripts/ensure-services.sh; exit $$status

## Official Alipay SDKs against the sandbox (needs npm; not part of `make test`).
interop: build
	cd tests/interop && npm ci --no-audit --no-fund && node node-sdk.js && node node-sdk-cert.js
	python3 -m venv target/interop-venv
	target/interop-venv/bin/pip install -q -r tests/interop/requirements.txt
	target/interop-venv/bin/python tests/interop/python_sdk.py

## Fuzz every parser of outside data (fuzz/, its own workspace): each target
## for FUZZ_S seconds (default 60), printing executions and coverage. Needs
## nightly and cargo-fuzz (not part of `make test`); see README "Fuzzing".
FUZZ_S ?= 60
fuzz:
	FUZZ_S=$(FUZZ_S) fuzz/run.sh
