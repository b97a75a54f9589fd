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
	$(BIN)/python -m pytest --durations=10

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

# Where a GPU is present: TensorRT joins the install, the gpu tests run, and the target fails
# unless at least one of them ran (all skipped or none collected is a failure, said in one line).
test-gpu: install
	@nvidia-smi -L >/dev/null 2>&1 || { echo "make test-gpu: no NVIDIA GPU here (nvidia-smi finds none); run it on a machine with one" >&2; exit 1; }
	$(BIN)/python -m pip install --quiet -e '.[dev,tensorrt]'
	$(BIN)/python -m pytest -m gpu -rs --junitxml=$(VENV)/gpu-tests.xml; rc=$$?; \
	$(BIN)/python benchmarks/gpu_tests_ran.py $(VENV)/gpu-tests.xml || exit 1; exit $$rc

bench: install
	$(BIN)/python benchmarks/run.py --out bench.json

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
