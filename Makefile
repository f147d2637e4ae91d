# Two commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3.11
TORCH ?= torch==2.13.*
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: demo test install install-dev bench gpu-check gpu-wheels clean

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

# GPU readiness check (scripts/gpu_check.py) on a machine with one CUDA GPU and its own python3 + torch, no network:
# wheels from `make gpu-wheels` (a machine with network; .whl/ travels with the checkout) go into GPU_SITE first.
GPU_PY ?= python3
GPU_SITE ?= /tmp/archlab-site
GPU_OUT ?= results/gpu
gpu-check:
	@if ls .whl/*.whl >/dev/null 2>&1; then $(GPU_PY) -m pip install -q --no-index --no-deps --no-compile --upgrade --target $(GPU_SITE) .whl/*.whl; fi
	PYTHONPATH=$(GPU_SITE):$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} $(GPU_PY) scripts/gpu_check.py --out $(GPU_OUT) $(GPU_CHECK_ARGS)

# What the GPU machine lacks (archlab's pydantic; fla for the fla section), as wheels for CPython $(GPU_PYVER) x86-64.
GPU_PYVER ?= 3.12
WHEEL_PY ?= python3
PYDANTIC_WHEELS ?= pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0
FLA_WHEELS ?= fla-core==0.6.0 flash-linear-attention==0.6.0
gpu-wheels:
	rm -rf .whl && mkdir -p .whl
	$(WHEEL_PY) -m pip download -q --no-deps --only-binary=:all: --python-version $(GPU_PYVER) --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl $(PYDANTIC_WHEELS)
	$(WHEEL_PY) -m pip download -q --no-deps --only-binary=:all: --python-version $(GPU_PYVER) --platform any -d .whl $(FLA_WHEELS)
	ls -l .whl

# Every paper claim, one after another (resumable: finished runs are skipped); results in results/reproduce/CLAIM.
# The recurrence claim exports an HF Llama, so the dev extras (transformers) are installed.
CLAIMS ?= canon_depo canon_tasks keel multipliers recurrence
reproduce: $(VENV)/.installed-dev
	for c in $(CLAIMS); do $(VENV)/bin/archlab reproduce $$c --jobs 2 || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache
