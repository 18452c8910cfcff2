# s3lake: `make demo` runs the product end to end locally, `make test` passes the tests on both Spark lines.
#   make test                  the suite on Spark 3.5 (.venv) and on Spark 4.1 (.venv-spark4), side by side
#   make test SPARK_LINE=4.1   one line only (3.5 = emr-7.x, 4.1 = emr-spark-8.1.x)
PYTHON        ?= python3
PYTHON_SPARK4 ?= $(PYTHON)
SPARK_LINE    ?= all
PYTEST_ARGS   ?=

LINES         := 3.5 4.1
VENV_3.5      := .venv
EXTRAS_3.5    := test,bench
PYTHON_3.5     = $(PYTHON)
MINPY_3.5     := (3, 9)
PYVAR_3.5     := PYTHON=python3.11
VENV_4.1      := .venv-spark4
EXTRAS_4.1    := test-spark4,bench
PYTHON_4.1     = $(PYTHON_SPARK4)
MINPY_4.1     := (3, 10)
PYVAR_4.1     := PYTHON_SPARK4=python3.11

# demo, bench, check and test-fast use the default line's venv.
VENV  ?= $(VENV_3.5)
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed

ifeq ($(SPARK_LINE),all)
TEST_LINES := $(LINES)
else ifneq ($(filter $(SPARK_LINE),$(LINES)),)
TEST_LINES := $(SPARK_LINE)
else
$(error SPARK_LINE must be one of: all $(LINES) (got '$(SPARK_LINE)'))
endif

.PHONY: install test test-fast check demo bench clean $(addprefix test-,$(LINES)) $(addprefix install-,$(LINES))

# $(1): a Spark line. Its venv gets an editable s3lake with that line's extras (again when setup.py
# changes); pyspark 4.1 needs Python >= 3.10.
define LINE_RULES
$(VENV_$(1))/.installed: setup.py testbed/setup.py
	@$(PYTHON_$(1)) -c 'import sys; sys.exit(sys.version_info < $(MINPY_$(1)))' || \
	  { echo "Spark $(1) needs Python >= $(MINPY_$(1)): set $(PYVAR_$(1))" >&2; exit 2; }
	$(PYTHON_$(1)) -m venv $(VENV_$(1))
	$(VENV_$(1))/bin/python -m pip install --quiet --upgrade pip
	$(VENV_$(1))/bin/python -m pip install --quiet -e '.[$(EXTRAS_$(1))]' -e ./testbed
	touch $$@

install-$(1): $(VENV_$(1))/.installed

test-$(1): $(VENV_$(1))/.installed
	@echo "== tests on Spark $(1) ($(VENV_$(1)))"
	PYSPARK_PYTHON=$$(abspath $(VENV_$(1))/bin/python) $(VENV_$(1))/bin/python -m pytest -q $(PYTEST_ARGS)
endef
$(foreach line,$(LINES),$(eval $(call LINE_RULES,$(line))))

install: $(addprefix install-,$(TEST_LINES))

# The lines run side by side (TEST_JOBS=1: one after the other): much of the suite waits on the emulated
# S3 (rate limits, back-off, spark-submit start-up), so two lines on 2 cores take far less than twice one.
TEST_JOBS ?= 2
test: install
	$(MAKE) --no-print-directory -j$(TEST_JOBS) --output-sync=target $(addprefix test-,$(TEST_LINES))

test-fast: $(STAMP)
	PYSPARK_PYTHON=$(abspath $(PY)) $(PY) -m pytest -q -m "not slow"

check: $(STAMP)
	$(VENV)/bin/ruff check lib testbed jobs tests bench
	shellcheck launch_emr.sh bootstrap/*.sh .ci/run

demo: $(STAMP)
	PYSPARK_PYTHON=$(abspath $(PY)) $(PY) -m s3lake_testbed.demo

bench: $(STAMP)
	PYSPARK_PYTHON=$(abspath $(PY)) $(PY) -m bench

clean:
	rm -rf $(VENV_3.5) $(VENV_4.1) .pytest_cache .ruff_cache .demo .bench build *.egg-info lib/*.egg-info testbed/*.egg-info
