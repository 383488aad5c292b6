# Two commands do all set-up on a fresh Linux machine (Python 3.10+):
#   make train   # venv + pinned deps, generates the synthetic shapes set, trains + evaluates
#   make test    # venv + pinned deps, runs the test suite (the command CI runs)
#   make lint    # ruff (lint + format check) and mypy; make format rewrites the files
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: install train eval test test-slow lint format bench coco clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	# torch first and pinned: an unpinned resolve would pull a newer multi-GB build.
	$(BIN)/pip install torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(BIN)/python src/train.py $(ARGS)

eval: $(STAMP)
	$(BIN)/python src/eval.py $(ARGS)

test: $(STAMP)
	WANDB_MODE=offline $(BIN)/python -m pytest -q

test-slow: $(STAMP)
	WANDB_MODE=offline $(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check src scripts tests
	$(BIN)/ruff format --check src scripts tests
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix src scripts tests
	$(BIN)/ruff format src scripts tests

bench: $(STAMP)
	$(BIN)/python scripts/benchmark.py $(ARGS)

# COCO 2017 (~20 GB) into data/coco.
coco:
	mkdir -p data/coco && cd data/coco && \
	for f in train2017.zip val2017.zip; do curl -fLO http://images.cocodataset.org/zips/$$f && unzip -q $$f && rm $$f; done && \
	curl -fLO http://images.cocodataset.org/annotations/annotations_trainval2017.zip && \
	unzip -q annotations_trainval2017.zip && rm annotations_trainval2017.zip

clean:
	rm -rf outputs multirun wandb lightning_logs .pytest_cache
