# The README's two commands: `make repro` (run everything) and `make test` (run the tests).
# Both create the environment in .venv first if it is missing.
VENV   := .venv
PYTHON := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup system-deps repro test lint bench dry-run clean-env

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(MAKE) --no-print-directory system-deps
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e '.[dev]'
	@touch $@

# Debian's dataset-fashion-mnist gives the cpu profile real Fashion-MNIST offline.
system-deps:
	@if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then \
		echo "Fashion-MNIST: Debian files present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get install -y -q dataset-fashion-mnist || (apt-get update -q && apt-get install -y -q dataset-fashion-mnist) \
		|| echo "skipped: apt-get could not install dataset-fashion-mnist; Fashion-MNIST will be downloaded by torchvision"; \
	else \
		echo "skipped: installing Debian's dataset-fashion-mnist needs root on Debian (sudo apt-get install dataset-fashion-mnist); Fashion-MNIST will be downloaded by torchvision instead"; \
	fi

# Every stage whose inputs changed, in order: data (its files are not in git: a fresh clone rebuilds them),
# train (every model the stores lack, by one worker process per core; it prints the expected time first and a
# line per model with the ETA), then each paper's notebook (loading the models) and the README's results.
# A fresh clone has no model store, so it trains everything (the README gives the time).
repro: setup
	$(VENV)/bin/dvc repro

# Lint first (ruff check + ruff format --check), then the tests: CI's one command covers both.
test: setup lint
	$(PYTHON) -m pytest

lint: setup
	$(VENV)/bin/ruff check lib tests notebooks
	$(VENV)/bin/ruff format --check lib tests

bench: setup
	$(PYTHON) -m lib.bench

# The paper profile of every stage end to end on full-size synthetic data, loops cut short, into
# build/dry-run/ (see README). On a CPU, cut the batch sizes too: make dry-run BATCH=16
STAGES = $(shell $(PYTHON) -m lib.stages)  # the registry (lib/stages/__init__.py)
dry-run: setup
	@for s in $(STAGES); do $(PYTHON) -m lib.pipeline $$s --profile paper --dry-run $(if $(BATCH),--batch-size $(BATCH)) $(if $(EXAMPLES),--examples $(EXAMPLES)) || exit 1; done

clean-env:
	rm -rf $(VENV)
