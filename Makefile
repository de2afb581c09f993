# klineflow — `make help` lists the targets. Every target is idempotent; `demo` and `test`
# run `setup` themselves, so a fresh machine needs nothing installed by hand.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
KLINEFLOW := $(VENV)/bin/klineflow
PYTEST_ARGS ?=
OPERATORS_JAR := build/flink-jars/klineflow-operators.jar
JAVA_SOURCES := $(shell find jvm -name '*.java')

.PHONY: system-packages help setup stack-up stack-down stack-status demo test test-unit chaos lint format \
        cluster-up cluster-down submit bench bench-live bench-peers clean

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

setup: $(VENV)/.installed build/.jars-fetched $(OPERATORS_JAR) system-packages ## Create the venv, fetch jars and the Kafka broker (mvn), build the job's Java operators, install redis-server and clickhouse-server
	@echo "setup: ok"

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) is required"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

build/.jars-fetched: pom.xml
	@command -v mvn >/dev/null || { echo "Maven (mvn) is required: apt-get install maven"; exit 1; }
	mvn -B -q -f pom.xml package
	@touch $@

# The job's own Java operators (jvm/), compiled against the jars of the installed PyFlink
# (lib/, and opt/ for flink-python) and shipped with the connector jars (every jar in
# build/flink-jars/ goes into pipeline.jars).
$(OPERATORS_JAR): $(JAVA_SOURCES) $(VENV)/.installed
	@command -v javac >/dev/null || { echo "a JDK (javac) is required: apt-get install openjdk-17-jdk-headless"; exit 1; }
	rm -rf build/jvm-classes && mkdir -p build/jvm-classes $(dir $@)
	javac --release 11 -nowarn -d build/jvm-classes \
	  -cp "$$($(PY) -c 'import pathlib, pyflink; home = pathlib.Path(pyflink.__file__).parent; print(f"{home}/lib/*:{home}/opt/*")')" \
	  $(JAVA_SOURCES)
	jar cf $@ -C build/jvm-classes .

# Debian packages: redis-server (the local stack) and clickhouse-server 18.16 (only for the
# wire-level tests of the native ClickHouse writer; the project itself uses chdb).
SYSTEM_PACKAGES := redis-server:redis-server clickhouse-server:/usr/sbin/clickhouse-server

system-packages:
	@missing=""; for entry in $(SYSTEM_PACKAGES); do \
	  package=$${entry%%:*}; binary=$${entry#*:}; \
	  command -v $$binary >/dev/null || missing="$$missing $$package"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing$$missing (apt-get)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "missing:$$missing -- run 'sudo apt-get install$$missing' (or make setup as root)"; exit 1; \
	  fi; \
	fi

stack-up: setup ## Start the local Kafka broker (KRaft) and Redis on loopback
	$(KLINEFLOW) stack up

stack-down: ## Stop the local stack
	@if [ -x $(KLINEFLOW) ]; then $(KLINEFLOW) stack down; else echo "no venv: nothing to stop"; fi

stack-status: ## Show the local stack
	$(KLINEFLOW) stack status

demo: setup ## Stack up, replay the sample, run the job bounded, print what landed
	$(KLINEFLOW) demo

test: setup ## Run the test suite (unit + integration + fast chaos cases; real Kafka/Redis/chdb/Flink; not `chaos`)
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: setup ## Run the unit tests only (no JVM, no servers)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

chaos: setup ## Run the slow fault-injection cases (pytest -m chaos: processes killed mid-stream); prints their figures
	$(PY) -m pytest -m chaos -s $(PYTEST_ARGS)

lint: setup ## ruff, ruff format --check and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: setup ## Format the code with ruff
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

cluster-up: setup ## Start a standalone Flink cluster from the PyFlink package (KLINEFLOW_TASKMANAGERS=N; dashboard :8081)
	$(KLINEFLOW) cluster up

cluster-down: ## Stop the standalone Flink cluster (every TaskManager and the JobManager)
	@if [ -x $(KLINEFLOW) ]; then $(KLINEFLOW) cluster down; else echo "no venv: nothing to stop"; fi

submit: setup ## Submit the job to the standalone cluster (make cluster-up first)
	$(KLINEFLOW) job submit

bench: setup ## Run the benchmarks (JSON to stdout and bench/results/)
	$(PY) bench/bench_pipeline.py

$(VENV)/.bench-installed: pyproject.toml $(VENV)/.installed
	$(PY) -m pip install -q -e '.[dev,bench]'
	@touch $@

bench-live: setup $(VENV)/.bench-installed ## Live latency of the unbounded job vs a bare consumer (JSON; BENCH_ARGS=...)
	$(PY) bench/bench_live.py $(BENCH_ARGS)

bench-peers: setup $(VENV)/.bench-installed ## klineflow vs floor, Flink SQL, quix-streams, bytewax on one topic (JSON; BENCH_ARGS=...)
	$(PY) bench/bench_peers.py $(BENCH_ARGS)

clean: stack-down cluster-down ## Stop everything and delete local state (.klineflow/)
	rm -rf .klineflow
