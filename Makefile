# Every target does its own set-up from a fresh clone: virtualenv, installs.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: venv run test lint fmt clean

$(STAMP): pyproject.toml constraints.txt
	@echo "==> creating virtualenv $(VENV) and installing fieldtrack (first run takes ~1 min)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	@touch $@

venv: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/fieldtrack run --simulate $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check pipeline tests scripts

fmt: $(STAMP)
	$(VENV)/bin/ruff format pipeline tests scripts

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
