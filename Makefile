# Two commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3.11
TORCH ?= torch==2.13.*
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: demo test install install-dev bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q '$(TORCH)'
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	$(VENV)/bin/archlab demo

test: $(VENV)/.installed-dev
	$(PY) -m pytest -q

# Benchmarks with their peers in the same run; result files in $(BENCH_OUT), diff two with benchmarks/compare.py.
BENCH_OUT ?= results/bench
bench: $(VENV)/.installed-dev
	$(PY) benchmarks/train_throughput.py --compile --json $(BENCH_OUT)/train_throughput.json
	$(PY) benchmarks/train_memory.py --json $(BENCH_OUT)/train_memory.json
	$(PY) benchmarks/mixer_throughput.py --compile --json $(BENCH_OUT)/mixer_throughput.json
	$(PY) benchmarks/generate_throughput.py --json $(BENCH_OUT)/generate_throughput.json

clean:
	rm -rf $(VENV) runs .pytest_cache
