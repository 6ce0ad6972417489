# Two entry points for a fresh Debian 12 machine (see README.md):
#   make run   installs micd into .venv and runs the daemon in the foreground for the current directory
#   make test  installs every system package, npm client and Python dependency the tests need, then runs the
#              linter, the type checker and the whole suite
# For development: `make test-fast` (the unit lane, under a minute: tests not marked slow) and `make lint`.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
# System packages the test suite drives for real (bazel for the REAPI tests, gcc for its cc_binary, git for
# `mic import git`, gradle and ccache for their remote-cache tests; moto needs nothing from apt).
APT_PACKAGES := bazel-bootstrap build-essential git gradle ccache
# The JS clients the real-client tests drive (nx, turbo), pinned by this npm project's lockfile (Node.js 20 and
# npm come with the machine); `npm ci` runs again only when the lockfile changes.
NODE_CLIENTS := tests/clients/node

.PHONY: run test test-fast lint install install-test system-deps node-clients

$(BIN)/python:
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet -e .

install-test: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'

system-deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing system packages:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

node-clients: $(NODE_CLIENTS)/node_modules/.package-lock.json

$(NODE_CLIENTS)/node_modules/.package-lock.json: $(NODE_CLIENTS)/package-lock.json
	npm ci --prefix $(NODE_CLIENTS) --no-audit --no-fund --loglevel=error
	touch $@

run: install
	$(BIN)/mic daemon run

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/mypy

test: system-deps install-test node-clients lint
	$(BIN)/pytest -q -ra

test-fast: $(BIN)/python
	$(BIN)/pytest -q -m "not slow"
