# The two commands: `make run` (the local pipeline on the embedded defaults) and
# `make test`. Both set up .venv once; a second call installs nothing.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.robeflow-installed
PYTHON ?= $(shell command -v python3.11 || command -v python3)
# dvc runs each stage's `robeflow ...` command through the shell: the venv comes first.
export PATH := $(abspath $(VENV))/bin:$(PATH)
export DVC_NO_ANALYTICS := 1
export DO_NOT_TRACK := 1
export FEAST_USAGE := False

.PHONY: run test install clean-outputs

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# Exactly the CPU wheel on these machines; a range in pyproject keeps pip from pulling CUDA.
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

run: $(STAMP)
	dvc repro
	@robeflow summary

test: $(STAMP)
	$(PY) -m pytest -q

clean-outputs:
	rm -rf data reports models registry monitoring
