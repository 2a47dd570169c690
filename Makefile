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

.PHONY: install test lint data flow demo evaluate bench clean

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

DATA := $${TWOSTREAM_DATA:-data}

# The whole job on the built-in dataset: data, flow, both streams trained, tested and fused.
# Re-running it resumes: finished steps are skipped.
demo: $(STAMP)
	$(BIN)/flowprep data pipelines/synthetic.yaml
	$(BIN)/flowprep extract pipelines/synthetic.yaml --workers $(WORKERS)
	$(BIN)/flowprep verify $(DATA)/flow/synthetic --no-decode
	$(BIN)/flowprep show $(DATA)/flow/synthetic Rotate/v_Rotate_g01_c01 --frame 10 -o runs/demo/flow-figure.png
	$(BIN)/trainer fit configs/synthetic-spatial.yaml --resume
	$(BIN)/trainer fit configs/synthetic-temporal.yaml --resume
	$(BIN)/trainer test runs/synthetic-spatial/checkpoint.pt --train-scores --train-frames 5 -o runs/demo
	$(BIN)/trainer test runs/synthetic-temporal/checkpoint.pt --train-scores --train-frames 5 -o runs/demo
	$(BIN)/trainer fuse runs/demo/scores-synthetic-split1-spatial-test.npz \
		runs/demo/scores-synthetic-split1-temporal-test.npz \
		--groups $(DATA)/synthetic/classes.json -o runs/demo/table3.md
	@echo
	@echo "artefacts:"
	@echo "  videos and splits   $(DATA)/synthetic/videos, $(DATA)/synthetic/splits"
	@echo "  flow shards         $(DATA)/flow/synthetic/shard-*.lmdb (flowprep info $(DATA)/flow/synthetic)"
	@echo "  flow picture        runs/demo/flow-figure.png"
	@echo "  checkpoints         runs/synthetic-spatial/checkpoint.pt, runs/synthetic-temporal/checkpoint.pt"
	@echo "  training curves     runs/synthetic-spatial/curves.png, runs/synthetic-temporal/curves.png"
	@echo "  metrics             runs/synthetic-spatial/metrics.csv, runs/synthetic-temporal/metrics.csv"
	@echo "  scores              runs/demo/scores-synthetic-split1-{spatial,temporal}-{test,train}.npz"
	@echo "  confusion matrices  runs/demo/confusion-synthetic-split1-{spatial,temporal}.png"
	@echo "  fusion table        runs/demo/table3.md"

# Table 4 of the paper from the test score files of splits 1-3 (trainer test ... --split N -o runs/eval).
evaluate: $(STAMP)
	$(BIN)/trainer report runs/eval/scores-$(DATASET)-split*-test.npz

# Figures, not tests: each script prints a table (bench/RESULTS.md keeps the latest).
bench: $(STAMP)
	$(BIN)/python bench/flow_accuracy.py
	$(BIN)/python bench/flow_speed.py
	$(BIN)/python bench/storage.py
	$(BIN)/python bench/loader.py
	$(BIN)/python bench/train_step.py
	$(BIN)/python bench/import.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
