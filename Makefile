# Two entry points on a fresh machine: `make demo` and `make test`.
# Both create .venv and install from pyproject.toml alone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test lint demo clean proto

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check recordkit recordkit_train tools tests
	$(BIN)/ruff format --check recordkit recordkit_train tools tests

proto: $(STAMP)
	$(BIN)/python tools/gen_proto.py

demo: $(STAMP)
	$(BIN)/recordkit-train demo demo

clean:
	rm -rf $(VENV) build *.egg-info
