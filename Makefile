# Two commands do all the set-up on a fresh machine (see README):
#   make train   installs into .venv if needed, then runs the main job on its default config
#   make test    installs into .venv if needed, then runs the test suite
# Installing is idempotent: it reruns only when pyproject.toml changes.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# On a machine without an NVIDIA GPU, torch is pinned to this release first so that the project's
# torch range is already satisfied and pip never pulls a multi-GB CUDA build.
CPU_TORCH ?= torch==2.13.0

.PHONY: install train test clean-runs

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
	@if ! $(PY) -c "import torch" 2>/dev/null; then \
	  if command -v nvidia-smi >/dev/null 2>&1; then echo "installing torch (GPU build)"; $(PY) -m pip install -q "torch>=2.6,<2.15"; \
	  else echo "installing $(CPU_TORCH) (CPU build)"; $(PY) -m pip install -q "$(CPU_TORCH)"; fi 2>&1 | grep -v "^WARNING: Location"; \
	fi
	@echo "installing ds-comgan and its dependencies into $(VENV)"
	@$(PY) -m pip install -q -e ".[test]" 2>&1 | grep -v -e "^WARNING: Location" -e "BuildBackendWarning" -e "^ *$$" || true
	@$(PY) -c "import torch, ray, accelerate, webdataset, tensorboardX, s3fs, pyarrow, comgan, cluster, data_shards" \
	  || { echo "install failed: see the pip output above"; exit 1; }
	@touch $@

train: install
	$(PY) jobs/train.py

test: install
	$(PY) -m pytest -n 2 --dist loadgroup tests

clean-runs:
	rm -rf runs data_shards/synthetic data_shards/tiny
