# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast test-gpu bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=23.1"
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

DEMO_RUN ?= runs/demo

demo: install
	$(BIN)/inceptionctl recipes
	$(BIN)/inceptionctl train --out $(DEMO_RUN) --resume auto
	$(BIN)/inceptionctl eval $(DEMO_RUN) --crops 1,10,144
	$(BIN)/inceptionctl export $(DEMO_RUN) --to onnx --calib-data digits
	$(BIN)/inceptionctl export $(DEMO_RUN) --to onnx --precision int8 --calib-data digits
	$(BIN)/inceptionctl eval $(DEMO_RUN)/best.onnx
	$(BIN)/inceptionctl eval $(DEMO_RUN)/best.int8.onnx
	$(BIN)/inceptionctl profile --recipe googlenet --paper

test: install
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

test-gpu: install
	$(BIN)/python -m pytest -m gpu

bench: install
	$(BIN)/python benchmarks/run.py --out bench.json

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
