# Set-up and common jobs. Every target creates .venv and installs what it needs on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU wheel of torch is installed first so that pip never pulls a multi-GB CUDA build;
# override (e.g. TORCH_SPEC=torch) to keep a torch you already have.
TORCH_SPEC ?= torch==2.13.0
WORKERS ?= $(shell nproc 2>/dev/null || echo 2)
DATASET ?= synthetic
# Data root of the pipeline files: TWOSTREAM_DATA=/big/disk make flow DATASET=ucf101

.PHONY: install test lint data flow demo clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check flowprep trainer tests bench

test: $(STAMP) lint
	$(BIN)/python -m pytest -q

data: $(STAMP)
	$(BIN)/flowprep data pipelines/$(DATASET).yaml

flow: $(STAMP)
	$(BIN)/flowprep extract pipelines/$(DATASET).yaml --workers $(WORKERS)

# The flow part of the whole job on the built-in dataset (training joins when the trainer lands).
demo: $(STAMP)
	$(BIN)/flowprep data pipelines/synthetic.yaml
	$(BIN)/flowprep extract pipelines/synthetic.yaml --workers $(WORKERS)
	$(BIN)/flowprep info $${TWOSTREAM_DATA:-data}/flow/synthetic
	$(BIN)/flowprep verify $${TWOSTREAM_DATA:-data}/flow/synthetic
	$(BIN)/flowprep show $${TWOSTREAM_DATA:-data}/flow/synthetic RotateClockwise/v_RotateClockwise_g01_c01 \
		--frame 10 -o $${TWOSTREAM_DATA:-data}/flow/synthetic-figure.png

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
