# Set-up and common jobs. Every target creates .venv and installs what it needs on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch and torchvision are installed first, as a matching pair: the PyPI builds (CUDA, and they run
# on a CPU); a CPU-only torch wheel has no torchvision that loads with it. Override
# (e.g. TORCH_SPEC=torch) to keep a torch you already have.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
WORKERS ?= $(shell nproc 2>/dev/null || echo 2)
DATASET ?= synthetic
# Data root of the pipeline files: TWOSTREAM_DATA=/big/disk make flow DATASET=ucf101

.PHONY: install test lint data flow demo evaluate reproduce bench clean gpu-check gpu-wheels

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check flowprep trainer tests bench

# the tests in parallel, a process a core (pytest-xdist): 12.5 min on 2 cores instead of 17-23
test: $(STAMP) lint
	$(BIN)/python -m pytest -q -n $(WORKERS)

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

# The paper's protocol on splits 1-3 (Table 4): flow (resumed if partly there), both streams trained,
# tested with 25 frames x 10 crops, fused, the table printed. Re-running resumes: a stream whose test
# scores exist is done. The spatial net starts from ImageNet CNN-M-2048 (SPATIAL_WEIGHTS, the Caffe
# release); the temporal one from scratch. The ResNet-50 pair: SPATIAL_CONFIG=configs/spatial-resnet50.yaml
# TEMPORAL_CONFIG=configs/temporal-resnet50.yaml SPATIAL_WEIGHTS=resnet50.pth TEMPORAL_WEIGHTS=resnet50.pth
SPATIAL_CONFIG ?= configs/spatial-imagenet.yaml
TEMPORAL_CONFIG ?= configs/temporal.yaml
SPLITS ?= 1 2 3
RUNS ?= runs/reproduce-$(DATASET)
FIT_ARGS ?=

reproduce: $(STAMP)
	@test "$(DATASET)" = ucf101 || test "$(SPATIAL_CONFIG)" != configs/spatial-imagenet.yaml || { echo "error: the default configs train on UCF-101: make reproduce DATASET=ucf101 (other datasets: give SPATIAL_CONFIG and TEMPORAL_CONFIG)" >&2; exit 2; }
	@test -n "$(SPATIAL_WEIGHTS)" || { echo "error: give SPATIAL_WEIGHTS=PATH, ImageNet weights for the spatial net (VGG_CNN_M_2048.caffemodel for $(SPATIAL_CONFIG); README: Weights)" >&2; exit 2; }
	@test -f "$(SPATIAL_WEIGHTS)" || { echo "error: SPATIAL_WEIGHTS=$(SPATIAL_WEIGHTS): no such file (README: Weights says where it is published)" >&2; exit 2; }
	@test -z "$(TEMPORAL_WEIGHTS)" || test -f "$(TEMPORAL_WEIGHTS)" || { echo "error: TEMPORAL_WEIGHTS=$(TEMPORAL_WEIGHTS): no such file" >&2; exit 2; }
	$(BIN)/flowprep data pipelines/$(DATASET).yaml
	$(BIN)/flowprep extract pipelines/$(DATASET).yaml --workers $(WORKERS)
	@for s in $(SPLITS); do \
	  for stream in spatial temporal; do \
	    scores=$(RUNS)/eval/scores-$(DATASET)-split$$s-$$stream-test.npz; \
	    if [ -f $$scores ]; then echo "split $$s $$stream: done ($$scores)"; continue; fi; \
	    if [ $$stream = spatial ]; then config=$(SPATIAL_CONFIG); weights="$(SPATIAL_WEIGHTS)"; \
	    else config=$(TEMPORAL_CONFIG); weights="$(TEMPORAL_WEIGHTS)"; fi; \
	    $(BIN)/trainer fit $$config --resume --set data.split=$$s --set run.dir=$(RUNS)/split$$s-$$stream \
	      $${weights:+--set model.pretrained=$$weights} $(FIT_ARGS) || exit $$?; \
	    $(BIN)/trainer test $(RUNS)/split$$s-$$stream/checkpoint.pt --split $$s --train-scores -o $(RUNS)/eval \
	      || exit $$?; \
	  done; \
	done
	$(BIN)/trainer report $(RUNS)/eval/scores-$(DATASET)-split*-test.npz -o $(RUNS)/table4.md

# Figures, not tests: each script prints a table (bench/RESULTS.md keeps the latest).
bench: $(STAMP)
	$(BIN)/python bench/flow_accuracy.py
	$(BIN)/python bench/flow_speed.py
	$(BIN)/python bench/storage.py
	$(BIN)/python bench/loader.py
	$(BIN)/python bench/train_step.py
	$(BIN)/python bench/import.py
	$(BIN)/python bench/feed.py
	$(BIN)/python bench/zero_level.py

# Every GPU figure from one command, on a CUDA host with the wheels of `make gpu-wheels` in .whl/ (the
# host reaches no registry): reports in OUT/gpu-check.json and OUT/gpu-check.md (README: Running on a GPU).
# DRY_RUN=1 rehearses every step at a tiny size on this machine's CPU (make test does).
OUT ?= gpu-check
DRY_RUN ?=
gpu-check:
ifeq ($(DRY_RUN),1)
	$(MAKE) install
	$(BIN)/python bench/gpu_check.py --out $(OUT) --dry-run
else
	python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu-check-site .whl/*.whl
	PYTHONPATH=/tmp/gpu-check-site python3 bench/gpu_check.py --out $(OUT)
endif

gpu-wheels: $(STAMP)
	PYTHON=$(BIN)/python bench/gpu_wheels.sh

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
