# Two commands on a fresh machine:  make run  |  make test
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: run test lint rules unit bench bench-fanout clean system-deps screenshot

$(STAMP): requirements.txt requirements-embedded.txt requirements-dev.txt pyproject.toml igsync_client/pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "igsync needs Python >= 3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	$(BIN)/pip install --quiet --no-deps -e ./igsync_client
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

## make run: set up and start igsync on embedded MongoDB-compatible and Redis servers
run: $(STAMP)
	$(BIN)/igsync serve

## make test: set up and run every check (lint, Dockerfile lint, alert rules, the whole test suite,
## then the dedup/realtime/trigger/ingest suites again on a real Redis Cluster and on Sentinel)
# The suites run on pytest-xdist workers, one per core (at most 4): each worker starts its own
# embedded stores and topologies on free loopback ports, so the tests share nothing. Most of a
# test's time is waiting on a server; on 2 cores this halves the run. TEST_WORKERS=0: one process.
TEST_WORKERS ?= auto
PYTEST := $(BIN)/pytest --numprocesses=$(TEST_WORKERS) --maxprocesses=4
test: $(STAMP) system-deps lint rules
	$(PYTEST)
	IGSYNC_TEST_REDIS=cluster $(PYTEST) -m topology
	IGSYNC_TEST_REDIS=sentinel $(PYTEST) -m topology

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/hadolint --failure-threshold warning Dockerfile

# The Prometheus alert rules: valid, and each alert fires (and stays quiet) when it should.
rules: system-deps
	promtool check rules deploy/prometheus/alerts.yml
	promtool test rules deploy/prometheus/alerts_test.yml
	promtool check config deploy/prometheus/prometheus.yml

# Debian packages some tests need (promtool/Prometheus, Chromium). Installed when missing.
# chromium: the inbox page's browser tests (Playwright drives /usr/bin/chromium; no browser download).
system-deps:
	@./scripts/system-deps.sh promtool:prometheus prometheus:prometheus chromium:chromium

bench: $(STAMP)
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/events.py

## make bench-fanout: WebSocket fan-out latency against a bare Tornado floor (docs/performance.md)
bench-fanout: $(STAMP)
	$(BIN)/python bench/fanout.py

## make screenshot: regenerate docs/inbox.png (the inbox page with sample messages, headless Chromium)
screenshot: $(STAMP) system-deps
	$(BIN)/python scripts/inbox_screenshot.py docs/inbox.png

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
