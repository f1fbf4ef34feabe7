# Each target sets itself up: `make demo` and `make test` work on a fresh machine with Python 3.9+ and pip.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint docs bench bench-gpu clean

venv: $(STAMP)

# torch==2.13.0 first: on the project's machines it is a local CPU build; elsewhere any torch>=2.1 will do.
# memcnn is installed without its declared torchvision/SimpleITK requirements, which `import memcnn` does not need.
$(STAMP): setup.cfg pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0 || $(BIN)/python -m pip install -q "torch>=2.1"
	$(BIN)/python -m pip install -q --no-deps "memcnn==1.5.2"
	$(BIN)/python -m pip install -q -e ".[test,cli]"
	-$(BIN)/python -m pip install -q "bm3d>=4.0"
	touch $(STAMP)

demo: venv
	$(BIN)/invprox demo

test: venv
	$(BIN)/python -m pytest -q -m "not gpu"

lint: venv
	$(BIN)/ruff check invprox tests benchmarks examples

# the API reference, built from the docstrings: docs/_build/html/index.html
docs: venv
	$(BIN)/python -m sphinx -W --keep-going -b html -q docs docs/_build/html

bench: venv
	$(BIN)/python benchmarks/engine_depth.py

# every GPU check in one command (~13 min on one GPU); results in benchmarks/results/gpu/
bench-gpu: venv
	PY=$(BIN)/python bash benchmarks/gpu_suite.sh

clean:
	rm -rf $(VENV) runs .pytest_cache docs/_build
