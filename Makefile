# Aforo: `make run` and `make test` are all a fresh clone needs.
# The first interpreter that actually runs and is 3.11 or 3.12 (pyenv shims may exist but fail).
PYTHON ?= $(shell for p in python3.12 python3.11 python3; do \
	$$p -c 'import sys; assert sys.version_info[:2] in ((3, 11), (3, 12))' 2>/dev/null \
	&& { echo $$p; break; }; done)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TOOLS  := .tools
# The console's browser tests drive Debian's chromium (Playwright's own browser download cannot
# work offline); `make test` installs it when it is missing (as root, as CI runs).
CHROMIUM := /usr/bin/chromium

.PHONY: install tools sdk-toolchains run test test-clock lint bench bench-quick up down status clean

install: $(STAMP)

# promtool checks the Prometheus rules (tests/test_deploy.py): taken from Debian's prometheus
# package without installing it (no daemon, no dependencies). Without apt the rules are still
# checked for structure and metric names.
tools: $(TOOLS)/promtool

$(TOOLS)/promtool:
	@mkdir -p $(TOOLS)
	@cd $(TOOLS) && { apt-get download prometheus >/dev/null 2>&1 \
	    || { apt-get update -qq >/dev/null 2>&1 && apt-get download prometheus >/dev/null 2>&1; }; } \
	  && dpkg-deb --fsys-tarfile prometheus_*.deb | tar -xO ./usr/bin/promtool > promtool.tmp \
	  && chmod +x promtool.tmp && mv promtool.tmp promtool && rm -f prometheus_*.deb \
	  || { rm -f promtool.tmp prometheus_*.deb; echo "promtool not available: rules checked for structure only"; }

$(STAMP): pyproject.toml sdks/python/pyproject.toml
	@test -n "$(PYTHON)" || { echo "Aforo needs Python 3.11 or 3.12 (Bytewax has no wheels for newer)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[embedded,dev]'
	$(BIN)/python -m pip install --quiet -e './sdks/python[test]'
	touch $(STAMP)

# --yes: as root, `aforo up` lists what Postgres needs changed on the machine and makes the
# changes without asking (run `aforo up` yourself to be asked first).
run: install
	$(BIN)/aforo up --yes
	$(BIN)/aforo migrate
	$(BIN)/aforo demo

# Go, a JDK with JUnit 5, Node.js and the Node SDK's packages, for the SDK suites (apt, npm).
sdk-toolchains:
	sdks/toolchains.sh

# Tests marked time_sensitive also run at 00:30 UTC on the 1st of a month and on 1 January
# (tests/conftest.py): `make test` includes them; `make test-clock` runs only them.
test: install tools $(CHROMIUM) sdk-toolchains
	$(BIN)/python -m pytest

test-clock: install
	$(BIN)/python -m pytest -m time_sensitive

$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium fonts-liberation; \
	else echo "the browser tests need Debian's chromium: sudo apt-get install -y chromium"; exit 1; fi

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/python -m bench

bench-quick: install
	$(BIN)/python -m bench --quick

up: install
	$(BIN)/aforo up --yes

down: install
	$(BIN)/aforo down

status: install
	$(BIN)/aforo status

clean: down
	rm -rf .aforo
