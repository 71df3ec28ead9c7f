# Two commands are all the set-up: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
# `make run` serves on loopback only; BIND_HOST=0.0.0.0 make run to accept other machines.
BIND_HOST ?= 127.0.0.1
# The web and worker processes of `make run` write their metrics here; the web's /metrics
# sums them (telephony/metrics.py). Emptied at each start.
METRICS_DIR := instance/prometheus
PYTEST_ARGS ?=

export FLASK_APP := wsgi

.PHONY: help run test lint migrate sim bench bench-inbound bench-campaign bench-contacts bench-transfer try-inbound try-capacity clean demo

## make help: this list (the default)
help:
	@grep -E '^## make ' $(MAKEFILE_LIST) | sed 's/^## //'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.runtime-installed: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev-installed: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $(VENV)/.runtime-installed $@

## make run: install, migrate (SQLite by default), serve web + worker on $(PORT)
run: $(VENV)/.runtime-installed migrate
	rm -rf $(METRICS_DIR) && mkdir -p $(METRICS_DIR)
	PATH="$(CURDIR)/$(BIN):$$PATH" BIND_HOST=$(BIND_HOST) PROMETHEUS_MULTIPROC_DIR="$(CURDIR)/$(METRICS_DIR)" \
	  $(BIN)/honcho start --procfile Procfile --port $(PORT) web worker

migrate: $(VENV)/.runtime-installed
	$(BIN)/flask db upgrade

## make test: install and run every test (SQLite, plus PostgreSQL when reachable)
test: $(VENV)/.dev-installed
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## make lint: ruff (style, imports, unused names) and mypy (types of telephony/)
lint: $(VENV)/.dev-installed
	$(BIN)/ruff check telephony tests bench
	$(BIN)/mypy

## make sim: the local Ultravox (9100) and carrier (9200) simulators
sim: $(VENV)/.runtime-installed
	$(BIN)/python -m telephony.sim all

## make bench: the benchmarks below, one after the other (exit 1 if any misses a target); results in docs/benchmarks.md
bench: $(VENV)/.runtime-installed
	$(BIN)/python -m bench.inbound; inbound=$$?; $(BIN)/python -m bench.campaign; campaign=$$?; \
	$(BIN)/python -m bench.contact_import; contacts=$$?; \
	$(BIN)/python -m bench.transfer; transfer=$$?; \
	test $$inbound -eq 0 -a $$campaign -eq 0 -a $$contacts -eq 0 -a $$transfer -eq 0

## make bench-inbound: inbound-webhook benchmark (simulators + gunicorn, PostgreSQL when reachable, else SQLite)
bench-inbound: $(VENV)/.runtime-installed
	$(BIN)/python -m bench.inbound $(BENCH_ARGS)

## make bench-transfer: tool call -> carrier redirect of a cold transfer (simulators + gunicorn; p99 <= 300 ms)
bench-transfer: $(VENV)/.runtime-installed
	$(BIN)/python -m bench.transfer $(BENCH_ARGS)

## make bench-campaign: campaign dispatch benchmark (2,000 contacts at 20/s, 2 workers, PostgreSQL required; ~5 min)
bench-campaign: $(VENV)/.runtime-installed
	$(BIN)/python -m bench.campaign $(BENCH_ARGS)

## make bench-contacts: contact import benchmark (100,000-row CSV through web + worker: time to done, peak RSS)
bench-contacts: $(VENV)/.runtime-installed
	$(BIN)/python -m bench.contact_import $(BENCH_ARGS)

## make try-inbound: one signed Twilio webhook through the real service, answer printed
try-inbound: $(VENV)/.runtime-installed
	$(BIN)/python -m bench.try_inbound

## make try-capacity: an agency at its call limit: two callers connected, a third held, then connected
try-capacity: $(VENV)/.runtime-installed
	$(BIN)/python -m bench.try_capacity

## make demo: simulators + service + worker with a seeded demo agency; prints copy-paste commands (Ctrl-C stops; DEMO_ARGS=--help)
demo: $(VENV)/.runtime-installed
	$(BIN)/python -m telephony.demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
