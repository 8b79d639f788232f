# Two set-up commands for a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The oldest supported stack (Databricks Runtime 15.4 LTS ML, Python 3.11), in its own venv.
COMPAT_PYTHON ?= python3.11
COMPAT_VENV := .venv-compat
COMPAT_BIN := $(COMPAT_VENV)/bin
COMPAT_STAMP := $(COMPAT_VENV)/.installed

.PHONY: install demo test unit integration lint bench compat clean browser fuse

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python setup.py constraints.txt
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[local,dev,database]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	PYSPARK_PYTHON=$(abspath $(BIN)/python) $(BIN)/python examples/demo.py

# ruff; the layer contracts of docs/ARCHITECTURE.md (.importlinter); types (mypy.ini)
lint: $(STAMP)
	$(BIN)/ruff check mlflow_spark_tools jobs tests bench notebooks examples
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy

# The report tests draw HTML in a real headless browser: Debian's Chromium, installed where it is
# missing and this user may (root with apt-get, as in CI); otherwise those tests say what to install.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; \
	else echo "Chromium is missing (apt-get install chromium): the report tests will fail."; fi

# The failed-run store is tested on a FUSE file system with the semantics of Databricks'
# object-store mounts (tests/support/object_store_fuse.py): Debian's fuse3 (fusermount3 and
# libfuse3), installed where missing and this user may (root with apt-get, as in CI). Without
# /dev/fuse those tests are skipped, each with one line saying why (-rs).
fuse:
	@command -v fusermount3 >/dev/null 2>&1 && ldconfig -p 2>/dev/null | grep -q libfuse3 || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends fuse3 libfuse3-3; \
	else echo "fuse3 is missing (apt-get install fuse3): the object-store mount tests will be skipped."; fi

test: $(STAMP) lint browser fuse
	PYSPARK_PYTHON=$(abspath $(BIN)/python) $(BIN)/python -m pytest -q -rs tests

unit: $(STAMP) fuse
	$(BIN)/python -m pytest -q -rs tests/unit

integration: $(STAMP) browser fuse
	PYSPARK_PYTHON=$(abspath $(BIN)/python) $(BIN)/python -m pytest -q -rs tests/integration

# The oldest supported stack, Databricks Runtime 15.4 LTS ML (constraints-compat.txt): pyspark 3.5.0
# (classic, and the Spark Connect client of the embedded engine), MLflow 2.13.1 (its `mlflow server`
# serves the tests), pandas 1.5.3, pyarrow 14.0.1, numpy 1.23.5. Runs the tests marked `compat`;
# the old stack's own deprecation warnings (distutils in pyspark 3.5) are not shown.
$(COMPAT_BIN)/python:
	$(COMPAT_PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_BIN)/python -m pip install --quiet --upgrade pip

$(COMPAT_STAMP): $(COMPAT_BIN)/python setup.py constraints-compat.txt
	$(COMPAT_BIN)/pip install --quiet --disable-pip-version-check -c constraints-compat.txt -e ".[local,database]" \
		mlflow scikit-learn pytest pytest-timeout psutil setuptools wheel mfusepy==3.1.1
	touch $(COMPAT_STAMP)

compat: $(COMPAT_STAMP) fuse
	PYSPARK_PYTHON=$(abspath $(COMPAT_BIN)/python) $(COMPAT_BIN)/python -m pytest -q -rs -m compat \
		-W ignore::DeprecationWarning tests

bench: $(STAMP)
	PYSPARK_PYTHON=$(abspath $(BIN)/python) $(BIN)/python bench/bench_tables.py

clean:
	rm -rf $(VENV) $(COMPAT_VENV) build dist *.egg-info spark-warehouse .demo
