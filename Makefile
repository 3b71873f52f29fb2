# Two commands: `make demo` and `make test`. Both set everything up from scratch on Debian.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
FMNIST_DIR := /usr/share/datasets/fashion-mnist
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench setup data clean

setup: $(STAMP) data

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: the CPU build on this machine's disk; anything looser pulls a CUDA build.
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[dev]'
	touch $(STAMP)

data:
	@if [ -n "$$BIOATTN_DATA" ] || [ -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then \
		true; \
	elif [ "$$(id -u)" = 0 ]; then \
		(apt-get install -y -qq dataset-fashion-mnist || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)); \
	else \
		echo "Fashion-MNIST is missing. Install it with 'sudo apt-get install dataset-fashion-mnist'"; \
		echo "or point BIOATTN_DATA (or --data-dir) at a folder holding the four IDX .gz files."; \
		exit 1; \
	fi

demo: setup
	$(VENV)/bin/bioattn demo

test: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/run.py
	$(PY) benchmarks/recording.py
	$(PY) benchmarks/architectures.py
	$(PY) benchmarks/replication_time.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
