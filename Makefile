# Set-up and common jobs. Every target creates .venv and installs what it needs on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU wheel of torch is installed first so that pip never pulls a multi-GB CUDA build;
# override (e.g. TORCH_SPEC=torch) to keep a torch you already have.
TORCH_SPEC ?= torch==2.13.0
WORKERS ?= 2
DEMO_DIR ?= runs/demo

SHARED_VIDEOS ?= ../shared/data/videos

.PHONY: install test lint demo clean

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

demo: $(STAMP)
	@test -d "$(SHARED_VIDEOS)" || { echo "make demo: $(SHARED_VIDEOS) not found (the real demo clips)"; exit 1; }
	$(BIN)/flowprep extract "$(SHARED_VIDEOS)" $(DEMO_DIR)/flow --workers $(WORKERS)
	$(BIN)/flowprep info $(DEMO_DIR)/flow
	$(BIN)/flowprep verify $(DEMO_DIR)/flow
	$(BIN)/flowprep show $(DEMO_DIR)/flow v_ApplyEyeMakeup_g01_c01 --frame 100 -o $(DEMO_DIR)/flow-figure.png

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
