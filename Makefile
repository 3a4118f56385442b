# Two entry points for a fresh machine: `make run` (the main job) and `make test`.
# The set-up pins torch==2.13.0 (a CPU build) and transformers==5.23.0 (the hf extra, tested);
# the package metadata keeps torch>=2.4 and transformers>=5.0.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,hf]' transformers==5.23.0
	touch $(STAMP)

.PHONY: setup run test bench-deps
setup: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/longmix attend

test: $(STAMP)
	$(PY) -m pytest -n 2 -q

bench-deps: $(STAMP)
	$(PY) -m pip install -q -e '.[test,bench]'
