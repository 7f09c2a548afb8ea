# Two set-up commands: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: demo test test-slow lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first, pinned to the local CPU wheel, so no later resolution pulls CUDA builds.
$(STAMP): $(PY) pyproject.toml constraints.txt
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/privlab demo

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

lint: $(STAMP)
	$(PY) -m ruff check privlab attacks mechanisms accounting tests benchmarks reproductions

bench: $(STAMP)
	$(PY) benchmarks/bench_engine.py --json benchmarks/results/engine.json
	$(PY) benchmarks/bench_accounting.py --json benchmarks/results/accounting.json
	$(PY) benchmarks/bench_dpsgd.py --json benchmarks/results/dpsgd.json
	$(PY) benchmarks/bench_streams.py --json benchmarks/results/streams.json
	$(PY) benchmarks/bench_network.py --json benchmarks/results/network.json
	$(PY) benchmarks/bench_structural.py --json benchmarks/results/structural.json
	$(PY) benchmarks/bench_shadow.py --json benchmarks/results/shadow.json
	$(PY) benchmarks/bench_distributed.py --json benchmarks/results/distributed.json

clean:
	rm -rf $(VENV) build *.egg-info runs
