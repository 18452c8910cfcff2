# s3lake: `make demo` runs the product end to end locally, `make test` passes the tests.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install test test-fast check demo bench clean

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	PYSPARK_PYTHON=$(abspath $(PY)) $(PY) -m pytest -q

test-fast: $(STAMP)
	PYSPARK_PYTHON=$(abspath $(PY)) $(PY) -m pytest -q -m "not slow"

check: $(STAMP)
	$(VENV)/bin/ruff check lib jobs tests bench
	shellcheck launch_emr.sh bootstrap/*.sh .ci/run

demo: $(STAMP)
	PYSPARK_PYTHON=$(abspath $(PY)) $(PY) -m s3lake.demo

bench: $(STAMP)
	PYSPARK_PYTHON=$(abspath $(PY)) $(PY) -m bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .demo .bench build *.egg-info lib/*.egg-info
