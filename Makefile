# Two commands a newcomer needs: `make demo` (train the tiny preset, sample, checkpoint) and `make test`.
# Each creates .venv on first use and installs everything into it.
# On a GPU node, `make gpt2-124m` runs the whole reproduction (scripts/reproduce_gpt2.py; its flags in ARGS,
# e.g. make gpt2-124m ARGS="--preset gpt2-124m-fineweb --gpu-hour-usd 2.5"). Rerun it to continue after an interruption.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Pinned so CPU machines with a local CPU wheel (and CI) take it in seconds. On a CPU-only machine
# that would otherwise download the multi-GB CUDA build, add TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH ?= torch==2.13.0
TORCH_INDEX ?=

.PHONY: setup demo test gpt2-124m clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

# --resume auto: a rerun continues an interrupted demo, or finds it done (train.py refuses a fresh run into a
# directory that holds another run's checkpoints).
demo: setup
	$(PY) prepare_data.py
	$(PY) train.py --resume auto

test: setup
	$(PY) -m pytest -q

gpt2-124m: setup
	$(PY) scripts/reproduce_gpt2.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
