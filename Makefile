# Every target does its own set-up from a fresh clone: virtualenv, installs.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

KAFKA_BOOTSTRAP ?= 127.0.0.1:19092

.PHONY: venv run test lint fmt clean kafka-up kafka-down evaluate bench bench-quick

$(STAMP): pyproject.toml constraints.txt
	@echo "==> creating virtualenv $(VENV) and installing fieldtrack (first run takes ~1 min)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	@touch $@

venv: $(STAMP)

# make run: embedded (no broker, no server). make run KAFKA=1: the same day through a local
# Apache Kafka broker (fetched from Maven Central and started on first use), a Faust worker
# and the sink.
run: $(STAMP)
ifeq ($(KAFKA),1)
	$(PY) -m pipeline.broker up
	$(VENV)/bin/fieldtrack run --simulate --kafka $(KAFKA_BOOTSTRAP) $(ARGS)
else
	$(VENV)/bin/fieldtrack run --simulate $(ARGS)
endif

evaluate: $(STAMP)
	$(PY) -m pip install -q -c constraints.txt -e ".[eval]"
	$(VENV)/bin/fieldtrack evaluate $(ARGS)

# make bench: benchmarks 1-6 of issue 7 (tables printed, JSON appended to bench/results/);
# the trackintel baseline needs the [eval] extra, the Kafka one starts the local broker
# (kafka-up) unless it runs. make bench-quick: ~2 min.
bench: $(STAMP)
	$(PY) -m pip install -q -c constraints.txt -e ".[eval]"
	$(VENV)/bin/fieldtrack bench $(ARGS)

bench-quick: $(STAMP)
	$(PY) -m pip install -q -c constraints.txt -e ".[eval]"
	$(VENV)/bin/fieldtrack bench --quick $(ARGS)

kafka-up: $(STAMP)
	$(PY) -m pipeline.broker up

kafka-down: $(STAMP)
	$(PY) -m pipeline.broker down

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check pipeline tests scripts

fmt: $(STAMP)
	$(VENV)/bin/ruff format pipeline tests scripts

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
