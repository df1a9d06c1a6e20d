# The README's two commands: `make run` and `make test`. Each sets up what is missing first.
SHELL := /bin/bash
PYTHON ?= python3
VENVS := .venvs
UV_VERSION := 0.13.9
UV := $(or $(shell command -v uv 2>/dev/null),$(VENVS)/uv/bin/uv)
ML := $(VENVS)/ml
AIRFLOW := $(VENVS)/airflow
ML_READY := $(ML)/.installed
AIRFLOW_READY := $(AIRFLOW)/.installed
SYSTEM_READY := $(VENVS)/.system-packages
PYTEST_ARGS ?=

export TF_CPP_MIN_LOG_LEVEL := 2
export TF_USE_LEGACY_KERAS := 1
# No __pycache__ in the work tree; the virtualenvs are compiled once when built (--compile-bytecode),
# which saves every fresh process (each Airflow task, each Beam step run alone) ~8 s of compiling
# TensorFlow and Beam: importing them took 12.6 s without .pyc files, 4.9 s with.
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: run pipeline stop test test-fast setup airflow airflow-stop benchmark lock clean-var help

help:
	@echo "make run    - set up, then run the training pipeline on the 2013-2014 trips"
	@echo "make test   - set up, then run the test suite"
	@echo "make test-fast - the edit-test loop: every test not marked slow (no model training, no live Airflow)"
	@echo "make airflow - start Airflow (UI on http://localhost:8080)"
	@echo "make benchmark - time the pipeline per step"

setup: $(ML_READY) $(AIRFLOW_READY) $(SYSTEM_READY)

$(VENVS)/uv/bin/uv:
	$(PYTHON) -m venv $(VENVS)/uv
	$(VENVS)/uv/bin/pip install -q --disable-pip-version-check uv==$(UV_VERSION)

# A rebuild happens only when a lock file (or setup.py) changes.
$(ML_READY): requirements/ml.lock setup.py | $(UV)
	@echo "== building the ML runtime ($(ML)) from requirements/ml.lock"
	$(UV) venv -q --allow-existing --python $(PYTHON) $(ML)
	VIRTUAL_ENV=$(ML) $(UV) pip sync -q --compile-bytecode requirements/ml.lock
	VIRTUAL_ENV=$(ML) $(UV) pip install -q --no-deps -e .
	touch $@

$(AIRFLOW_READY): requirements/airflow.lock | $(UV)
	@echo "== building the Airflow environment ($(AIRFLOW)) from requirements/airflow.lock"
	$(UV) venv -q --allow-existing --python $(PYTHON) $(AIRFLOW)
	VIRTUAL_ENV=$(AIRFLOW) $(UV) pip sync -q --compile-bytecode requirements/airflow.lock
	touch $@

# PostgreSQL (the MLMD server backend under test) and Chromium (report tests), from Debian.
$(SYSTEM_READY): scripts/install-system-packages.sh
	bash scripts/install-system-packages.sh
	@mkdir -p $(VENVS) && touch $@

lock: | $(UV)
	$(UV) pip compile -q --python-version 3.11 requirements/ml.in -o requirements/ml.lock
	$(UV) pip compile -q --python-version 3.11 requirements/airflow.in -o requirements/airflow.lock

# The whole loop through Airflow's scheduler (mlops/loop.py): training, serving, traffic,
# monitoring, drift-triggered retraining and rollout. Airflow and the servers keep running.
run: setup
	$(ML)/bin/python -m mlops.loop

# The training pipeline alone, in one process, without Airflow.
pipeline: setup
	$(ML)/bin/mlops pipeline run --start 2013-01-01 --end 2015-01-01

stop:
	$(ML)/bin/python -m mlops.loop --stop

# Two runs, one per environment: the DAG tests need Airflow, everything else the ML runtime. They
# run at the same time: the DAG tests spend much of theirs waiting on Airflow's scheduler, the
# others on CPU (one after the other they took 29 + 33 min on 2 cores). The DAG tests' output is
# kept in $(DAG_TEST_LOG) and printed after the others'; the exit status is failure if either failed.
DAG_TEST_LOG := var/test-dags.log
test: setup
	@mkdir -p $(dir $(DAG_TEST_LOG))
	@echo "== tests/dags run beside the other tests ($(AIRFLOW)); their output follows, from $(DAG_TEST_LOG)"
	@$(AIRFLOW)/bin/python -m pytest tests/dags $(PYTEST_ARGS) > $(DAG_TEST_LOG) 2>&1 & dags=$$!; \
	$(ML)/bin/python -m pytest --ignore=tests/dags $(PYTEST_ARGS); ml=$$?; \
	wait $$dags; dag_status=$$?; \
	echo "== tests/dags ($(AIRFLOW)), exit status $$dag_status"; cat $(DAG_TEST_LOG); \
	echo "== exit status: tests $$ml, tests/dags $$dag_status"; \
	test $$ml -eq 0 -a $$dag_status -eq 0

# The edit-test loop: the same two runs without the tests marked `slow` (they train models or run
# Airflow's scheduler). `make test` still runs everything.
test-fast: setup
	$(ML)/bin/python -m pytest --ignore=tests/dags -m "not slow" $(PYTEST_ARGS)
	$(AIRFLOW)/bin/python -m pytest tests/dags -m "not slow" $(PYTEST_ARGS)

# Airflow in the foreground (Ctrl-C stops it); prints the UI address and the admin login.
airflow: setup
	$(ML)/bin/python -m mlops.airflow standalone

# Stops the Airflow started in the background (`python -m mlops.airflow start`, `make run`).
airflow-stop:
	$(ML)/bin/python -m mlops.airflow stop

benchmark: setup
	$(ML)/bin/python benchmarks/pipeline_benchmark.py

clean-var:
	rm -rf var
