# Every target goes through one virtual environment, .venv, built from the repo's own files.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install demo test bench bundles lint chromium clean

install: $(STAMP)

# Rebuilt only when the package definition or the pinned versions change.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev,s3]"
	touch $(STAMP)

# Headless browser for the report test; CI runs as root on Debian.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the report test"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

demo: install
	$(VENV)/bin/raeflow demo --out demo-out

test: install chromium
	$(PY) -m pytest $(PYTEST_ARGS)

# The bench extra adds BM3D (non-commercial licence: a baseline to compare with, never a runtime dependency)
# and imagededup (bench/dedup_quality.py's perceptual-hash baseline; that bench joins this list once
# builtin:photo-ae ships).
bench: install
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev,s3,bench]"
	$(PY) bench/decode.py
	$(PY) bench/train_throughput.py
	$(PY) bench/embed_throughput.py
	$(PY) bench/denoise_quality.py
	$(PY) bench/zoo_quality.py
	$(PY) bench/index_throughput.py

# Retrain the pretrained bundles shipped in raeflow/bundles/ (about 3 hours on 2 CPU cores with AMX;
# on the GPU where there is one) and measure them; stopped, it resumes when run again. Needs
# ../shared/benchmarks/denoise and the bench extra (BM3D is not needed here).
bundles: install
	$(PY) bench/make_bundles.py

lint: install
	$(VENV)/bin/ruff check raeflow tests bench jobs
	$(VENV)/bin/ruff format --check raeflow tests bench jobs
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) demo-out bench-out .pytest_cache .mypy_cache .ruff_cache
