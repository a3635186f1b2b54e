# The commands of the README: `make train`, `make test` and `make explain`.
# Each creates .venv with python3, installs the pinned dependencies, fetches the data
# (SHA-256 checked, see npnet/data/mnist.py) and runs.  Only python3 and make are needed.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check --no-input -q
ARGS   ?=
PYTEST_ARGS ?=
CHROMIUM := /usr/bin/chromium

.PHONY: train test explain data bench docs-check clean

$(VENV)/.runtime: requirements.txt setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -r requirements.txt
	$(PIP) install --no-deps --no-build-isolation -e .
	$(PY) -m npnet.kernels.warm   # compile npnet's bytecode and kernels into their caches, once
	touch $@

$(VENV)/.test: requirements-test.txt $(VENV)/.runtime
	$(PIP) install -r requirements-test.txt
	touch $@

data: $(VENV)/.runtime
	$(PY) -m npnet.data fetch mnist

train: data
	$(PY) examples/train_lenet.py $(ARGS)

# The browser tests (tests/test_explain_browser.py) drive Debian's chromium through
# Playwright; Playwright's own browser download cannot work offline.  Installed here when
# missing (as root, as CI runs); if it cannot be, make stops: those tests never skip.
$(CHROMIUM):
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium || \
	  { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y \
	    --no-install-recommends chromium; } || \
	  { echo "error: cannot install chromium (Debian's package) for the browser tests;" \
	    "run: apt-get install chromium" >&2; exit 1; }
	test -x $(CHROMIUM)

test: $(VENV)/.test data $(CHROMIUM)
	$(PY) -m pytest $(PYTEST_ARGS)

# The page of examples/explain.py for runs/lenet5/best.npz (`make train` makes it);
# ARGS="--checkpoint PATH --port N" for another.
explain: data
	$(PY) examples/explain.py $(ARGS)

bench: $(VENV)/.test data
	$(PY) benchmarks/bench_lenet.py $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
