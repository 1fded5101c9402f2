# Two entry points (see README): `make demo` and `make test`. Both set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is pinned to the CPU wheel that installs offline-fast; GPU users install their own torch first.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo test setup-eva02 test-eva02

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

demo: setup
	$(PY) recipes/train.py

# Lint and format (ruff, pinned in the test extra), the main suite, then the EVA02 (timm) tests in their own venv.
test: setup setup-eva02
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q -p no:cacheprovider
	$(EVA02_PY) -m pytest -q -p no:cacheprovider $(EVA02_TESTS)

# EVA02 (timm) tests need torchvision, and the only torchvision for torch 2.13 here is a CUDA build that
# fails to import against the CPU torch of $(VENV); so they run in their own venv with a matching
# torch/torchvision pair (CUDA builds, ~6.4 GB on disk, ~2 min to build from the local wheels; they run on
# CPU too). The main suite skips them (no timm there); `make test` runs them after it here.
EVA02_VENV ?= .venv-eva02
EVA02_PY := $(EVA02_VENV)/bin/python
EVA02_TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
EVA02_TESTS ?= $(wildcard tests/baselines/test_eva02*.py) tests/backbones/test_registry.py

setup-eva02: $(EVA02_VENV)/.installed

# The torch/torchvision pins are repeated in the second install so the extras cannot move them.
$(EVA02_VENV)/.installed: pyproject.toml
	python3 -m venv $(EVA02_VENV)
	$(EVA02_PY) -m pip install -q --upgrade pip
	$(EVA02_PY) -m pip install -q $(EVA02_TORCH_SPEC) "timm>=1.0.31"
	$(EVA02_PY) -m pip install -q -e ".[test,eva02]" $(EVA02_TORCH_SPEC)
	$(EVA02_PY) -c "import torch, torchvision, timm; print('eva02 venv:', torch.__version__, torchvision.__version__, timm.__version__)"
	touch $@

test-eva02: setup-eva02
	$(EVA02_PY) -m pytest -q -p no:cacheprovider $(EVA02_TESTS)
