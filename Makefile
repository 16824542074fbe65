# Quick start: `make demo`, then `make test`. Every target installs what is missing first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
OPA := $(shell command -v opa 2>/dev/null || echo bin/opa)

.PHONY: bootstrap up down status demo test test-unit rego-test lint fmt clean bench bench-tools bench-gate bench-shaping bench-tls soak redteam

bootstrap:  ## install what this machine lacks (venvs, redis-server, opa)
	@bash scripts/bootstrap.sh

up: bootstrap  ## start the stack in the background and print its URLs
	@$(VENV)/bin/extauthz dev up

down:  ## stop exactly the processes `make up` started
	@if [ -x $(VENV)/bin/extauthz ]; then $(VENV)/bin/extauthz dev down; fi

status:
	@$(VENV)/bin/extauthz dev status

demo: bootstrap  ## start the stack and show allowed and denied requests through Envoy
	@$(VENV)/bin/extauthz dev demo

rego-test: bootstrap  ## opa check --strict, opa fmt, opa test (coverage >= 95 %)
	@$(VENV)/bin/extauthz policy test --min-coverage 95
	@$(OPA) test bench/peers/policy rego/ | tail -n 1

test: bootstrap rego-test lint  ## everything: Rego tests, lint, unit, integration, e2e (real stack), bench gate
	@bash scripts/install_bench_tools.sh --minimal
	@bash scripts/redteam_venv.sh
	@$(PY) -m pytest -q -p no:cacheprovider tests

bench-tools:  ## h2load, envoyproxy/ratelimit and the OPA peer (into ./bin) for the benchmarks
	@bash scripts/install_bench_tools.sh

bench: bootstrap bench-tools  ## micro + end-to-end benchmarks -> bench/results/<date>/report.md
	@$(PY) -m bench.run

bench-gate: bootstrap  ## the short CI benchmark gate alone (ratios vs bench/baseline.json)
	@bash scripts/install_bench_tools.sh --minimal
	@$(PY) -m bench.gate

bench-shaping: bootstrap  ## what response shaping costs (shaped / unshaped, with and without the filters)
	@bash scripts/install_bench_tools.sh --minimal
	@$(PY) -m bench.shaping

bench-tls: bootstrap  ## what the TLS listener adds over plain HTTP (p50 at concurrency 1)
	@bash scripts/install_bench_tools.sh --minimal
	@$(PY) -m bench.tls

soak: bootstrap  ## 10 minutes of mixed traffic through Envoy: RSS, fds, Redis memory, p99 drift (not in CI)
	@$(PY) -m bench.soak

redteam: bootstrap  ## IBM ART attacks through Envoy, defense off and on (~6 min) -> bench/results/<date>/redteam.md
	@bash scripts/redteam_venv.sh
	@$(PY) -m bench.redteam.run

test-unit: bootstrap
	@$(PY) -m pytest -q tests/unit

lint: bootstrap
	@$(VENV)/bin/ruff check extauthz tests bench scripts modelserver examples
	@$(VENV)/bin/ruff format --check extauthz tests bench scripts modelserver examples

fmt: bootstrap
	@$(VENV)/bin/ruff format extauthz tests bench scripts modelserver examples
	@$(OPA) fmt -w rego/

clean: down
	rm -rf .run
