# Aforo: `make run` and `make test` are all a fresh clone needs.
# The first interpreter that actually runs and is 3.11 or 3.12 (pyenv shims may exist but fail).
PYTHON ?= $(shell for p in python3.12 python3.11 python3; do \
	$$p -c 'import sys; assert sys.version_info[:2] in ((3, 11), (3, 12))' 2>/dev/null \
	&& { echo $$p; break; }; done)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TOOLS  := .tools

.PHONY: install tools run test lint bench bench-quick up down status clean

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

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "Aforo needs Python 3.11 or 3.12 (Bytewax has no wheels for newer)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[embedded,dev]'
	touch $(STAMP)

run: install
	$(BIN)/aforo up
	$(BIN)/aforo migrate
	$(BIN)/aforo demo

test: install tools
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/python -m bench

bench-quick: install
	$(BIN)/python -m bench --quick

up: install
	$(BIN)/aforo up

down: install
	$(BIN)/aforo down

status: install
	$(BIN)/aforo status

clean: down
	rm -rf .aforo
