# Two commands a newcomer needs: `make demo` (train the tiny preset, sample, checkpoint) and `make test`.
# Each creates .venv on first use and installs into it exactly the versions in requirements.lock (plus torch, pinned
# below). `make upgrade` refreshes the lock to the newest releases and runs the tests against them first.
# On a GPU node, `make gpt2-124m` runs the whole reproduction (scripts/reproduce_gpt2.py; its flags in ARGS,
# e.g. make gpt2-124m ARGS="--preset gpt2-124m-fineweb --gpu-hour-usd 2.5"). Rerun it to continue after an interruption.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Pinned so CPU machines with a local CPU wheel (and CI) take it in seconds. On a CPU-only machine
# that would otherwise download the multi-GB CUDA build, add TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
LOCK := requirements.lock
# pytest arguments of `make upgrade`: the quick subset by default; UPGRADE_TESTS= runs the whole suite.
UPGRADE_TESTS ?= -m 'not slow'

.PHONY: setup demo test upgrade gpt2-124m clean

setup: $(VENV)/.installed

# torch first, its own dependencies held to the lock's versions (-c); then the lock; then the project without
# resolving anything (--no-deps), so nothing floats; pip check fails the setup if the lock misses a dependency.
# (setuptools warns at every editable install of a flat layout like this one that a folder named like a module
# could shadow it: that one warning is silenced by its text.)
$(VENV)/.installed: pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)" -c $(LOCK) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install --quiet -r $(LOCK)
	PYTHONWARNINGS='ignore:Editable installation' $(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m pip check
	touch $@

# A fresh environment at the newest releases pyproject.toml allows; requirements.lock is replaced only if the
# tests pass there (its header then records the date and the result).
upgrade:
	$(PYTHON) scripts/upgrade_lock.py --torch "$(TORCH)" --tests "$(UPGRADE_TESTS)"

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
