# Two entry points (see README): `make demo` and `make test`. Both set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is pinned to the CPU wheel that installs offline-fast; GPU users install their own torch first.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo test

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

demo: setup
	$(PY) recipes/train.py

test: setup
	$(PY) -m pytest -q -p no:cacheprovider
