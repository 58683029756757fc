# Two entry points: `make demo` and `make test`. Each creates .venv if missing and installs
# torch==2.13.0 first (a CPU wheel; an unpinned torch would pull a multi-GB CUDA build).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.diffusekit-installed

.PHONY: setup demo test lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]" torch==2.13.0
	$(PY) -m pip install --quiet --no-deps "torchcfm>=1.0"  # see the dev extra in pyproject.toml
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/diffusekit demo --out demo_out

test: $(STAMP)
	OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -n 2 --durations=15 -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests

clean:
	rm -rf $(VENV) demo_out
