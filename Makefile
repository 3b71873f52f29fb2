# Two commands: `make demo` and `make test`. Both set everything up from scratch on Debian.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
FMNIST_DIR := /usr/share/datasets/fashion-mnist
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench docs setup data browser report-screenshot clean

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

# Chromium for the report's browser test (tests/test_report_browser.py, skipped without it).
browser:
	@if command -v chromium >/dev/null 2>&1 || [ -n "$$CHROMIUM" ]; then \
		true; \
	elif [ "$$(id -u)" = 0 ]; then \
		(DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) || echo "Chromium could not be installed: the report's browser test will be skipped."); \
	else \
		echo "Chromium is missing: the report's browser test will be skipped. Install it with"; \
		echo "'sudo apt-get install chromium' (or point CHROMIUM at a Chromium binary)."; \
	fi

demo: setup
	$(VENV)/bin/bioattn demo

test: setup browser
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/run.py
	$(PY) benchmarks/recording.py
	$(PY) benchmarks/architectures.py
	$(PY) benchmarks/replication_time.py

# The documentation site (mkdocs.yml) into site/: offline, strict (a broken link or docstring
# reference is an error); open site/index.html.
docs: setup
	$(VENV)/bin/mkdocs build --strict -d site

# The README's screenshot of a report page (a demo results folder; default runs/demo).
report-screenshot: setup browser
	$(PY) scripts/report_screenshot.py $(or $(RUN),runs/demo) docs/report.png --height 1500

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
