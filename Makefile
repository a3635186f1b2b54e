# The two commands of the README: `make train` and `make test`.
# Each creates .venv with python3, installs the pinned dependencies, fetches the data
# (SHA-256 checked, see npnet/data/mnist.py) and runs.  Only python3 and make are needed.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check --no-input -q
ARGS   ?=
PYTEST_ARGS ?=

.PHONY: train test data bench docs-check clean

$(VENV)/.runtime: requirements.txt setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -r requirements.txt
	$(PIP) install --no-deps --no-build-isolation -e .
	$(PY) -m npnet.kernels.warm   # compile the kernels into Numba's cache once, now
	touch $@

$(VENV)/.test: requirements-test.txt $(VENV)/.runtime
	$(PIP) install -r requirements-test.txt
	touch $@

data: $(VENV)/.runtime
	$(PY) -m npnet.data fetch mnist

train: data
	$(PY) examples/train_lenet.py $(ARGS)

test: $(VENV)/.test data
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.test data
	$(PY) benchmarks/bench_lenet.py $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
