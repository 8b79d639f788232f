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

.PHONY: install demo test unit integration lint bench compat clean browser fuse postgres jars compat-jars test-jvm

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python setup.py constraints.txt
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[local,dev,database]"
	touch $(STAMP)

install: $(STAMP)

# Delta Lake's jars for classic local Spark, the engine Databricks runs (the table tests on JVM
# Spark, spark-submit with --jars): the delta-spark and delta-storage versions pinned beside the
# venv's pyspark, for its Scala (2.13 for Spark 4, 2.12 for pyspark 3.5), from Maven Central at
# install time into <venv>/delta-jars. Databricks runtimes have Delta built in.
define fetch_delta_jars
	@version=$$(sed -n 's/^delta-spark==//p' $(2)); dir=$(1)/delta-jars; rm -rf $$dir.part; \
	for artifact in io.delta:delta-spark_$(3):$$version io.delta:delta-storage:$$version; do \
		mvn -q -B dependency:copy -Dartifact=$$artifact -DoutputDirectory=$$dir.part >$(1)/mvn.log 2>&1 \
			|| { cat $(1)/mvn.log; exit 1; }; \
	done; rm -rf $$dir && mv $$dir.part $$dir && echo "Delta Lake $$version jars in $$dir"
endef

$(VENV)/delta-jars/.fetched: constraints.txt | $(BIN)/python
	$(call fetch_delta_jars,$(VENV),constraints.txt,2.13)
	touch $@

$(COMPAT_VENV)/delta-jars/.fetched: constraints-compat.txt | $(COMPAT_BIN)/python
	$(call fetch_delta_jars,$(COMPAT_VENV),constraints-compat.txt,2.12)
	touch $@

jars: $(VENV)/delta-jars/.fetched
compat-jars: $(COMPAT_VENV)/delta-jars/.fetched

demo: $(STAMP)
	PYSPARK_PYTHON=$(abspath $(BIN)/python) $(BIN)/python examples/demo.py

# ruff; the layer contracts of docs/ARCHITECTURE.md (.importlinter); types (mypy.ini)
lint: $(STAMP)
	$(BIN)/ruff check mlflow_spark_tools jobs tests bench notebooks examples
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy

# The report tests draw HTML in a real headless browser: Debian's Chromium, installed where it is
# missing and this user may (root with apt-get, as in CI); otherwise those tests say what to install.
# A font with Chinese, Japanese and Korean glyphs too (WenQuanYi Micro Hei, 5 MB), for the browser
# and the PNGs: without one, CJK run names and params are drawn as empty boxes.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; \
	else echo "Chromium is missing (apt-get install chromium): the report tests will fail."; fi
	@{ [ -e /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ] || fc-list :lang=zh family 2>/dev/null | grep -q .; } || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends fonts-wqy-microhei; \
	else echo "No font covers Chinese (apt-get install fonts-wqy-microhei): a report test will fail."; fi

# The failed-run store is tested on a FUSE file system with the semantics of Databricks'
# object-store mounts (tests/support/object_store_fuse.py): Debian's fuse3 (fusermount3 and
# libfuse3), installed where missing and this user may (root with apt-get, as in CI). Without
# /dev/fuse those tests are skipped, each with one line saying why (-rs).
fuse:
	@command -v fusermount3 >/dev/null 2>&1 && ldconfig -p 2>/dev/null | grep -q libfuse3 || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends fuse3 libfuse3-3; \
	else echo "fuse3 is missing (apt-get install fuse3): the object-store mount tests will be skipped."; fi

# The PostgreSQL backend-store tests start a server from Debian's binaries, which live in a
# versioned folder off PATH (/usr/lib/postgresql/<version>/bin, found there by
# tests/support/postgres_server.py): installed where neither has initdb and this user may (root
# with apt-get, as in CI); otherwise those tests are skipped with one line saying why (-rs).
postgres:
	@command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql; \
	else echo "PostgreSQL's server is missing (apt-get install postgresql): its tests will be skipped."; fi

test: $(STAMP) jars lint browser fuse postgres
	PYSPARK_PYTHON=$(abspath $(BIN)/python) $(BIN)/python -m pytest -q -rs tests
	$(MAKE) --no-print-directory test-jvm

# The tests marked `jvm` again, on classic local JVM Spark with Delta Lake (tests/conftest.py): a
# process of their own, since pyspark holds no classic session beside a Spark Connect one.
test-jvm: $(STAMP) jars
	MLFLOW_SPARK_TOOLS_TEST_ENGINE=classic PYSPARK_PYTHON=$(abspath $(BIN)/python) \
		$(BIN)/python -m pytest -q -rs -m jvm tests/integration

unit: $(STAMP) fuse
	$(BIN)/python -m pytest -q -rs tests/unit

integration: $(STAMP) jars browser fuse postgres
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

compat: $(COMPAT_STAMP) compat-jars fuse
	PYSPARK_PYTHON=$(abspath $(COMPAT_BIN)/python) $(COMPAT_BIN)/python -m pytest -q -rs -m compat \
		-W ignore::DeprecationWarning tests
	MLFLOW_SPARK_TOOLS_TEST_ENGINE=classic PYSPARK_PYTHON=$(abspath $(COMPAT_BIN)/python) \
		$(COMPAT_BIN)/python -m pytest -q -rs -m "compat and jvm" -W ignore::DeprecationWarning $(COMPAT_JVM_SKIP) \
		tests/integration

# On classic Spark 3.5 the engine's side of the tables: the sources' own comparisons and a second
# history test run on classic Spark 4.1 in `make test`, and would take two minutes more here.
COMPAT_JVM_SKIP := \
	--deselect tests/integration/test_database_source.py::test_database_source_builds_the_same_tables_as_rest_and_refreshes_them_alike \
	--deselect tests/integration/test_system_tables_source.py::test_system_tables_build_the_same_tables_as_rest_and_refresh_them \
	--deselect tests/integration/test_metric_history.py::test_a_key_selection_and_changing_it

bench: $(STAMP)
	PYSPARK_PYTHON=$(abspath $(BIN)/python) $(BIN)/python bench/bench_tables.py

clean:
	rm -rf $(VENV) $(COMPAT_VENV) build dist *.egg-info spark-warehouse .demo
