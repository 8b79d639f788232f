"""Packaging for mlflow-spark-tools.

The top-level ``conf/`` directory ships inside the wheel as ``mlflow_spark_tools._conf`` so
that installed entry points find the same defaults and rate-limit profiles as a checkout.

MLflow is not a hard requirement. A Databricks ML runtime ships the full ``mlflow``
distribution; requiring ``mlflow-skinny`` would make pip install it beside that one, over the same
``mlflow`` package files, and leave a broken MLflow of mixed versions. The wheel uses the MLflow it
finds (``mlflow`` or ``mlflow-skinny``, at least ``MLFLOW_FLOOR``, checked at import) and the
``mlflow`` extra installs ``mlflow-skinny`` where there is none. The lower bounds are the versions
``make compat`` tests: Databricks Runtime 15.4 LTS ML (constraints-compat.txt).
"""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
MLFLOW_FLOOR = "2.13.1"  # keep in step with mlflow_spark_tools/core/dependencies.py

WHEEL_ENTRY_POINTS = ("build-tables", "replay", "best-run", "last-run", "sql", "dump-run",
                      "dump-experiment", "system-tags", "log-model", "report")

setup(
    name="mlflow-spark-tools",
    version="0.1.0",
    description="Spark-native MLflow tools for Databricks: flattened experiment tables, "
    "rate-limit-safe run logging from Spark tasks and a throttled replay job.",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["mlflow_spark_tools", "mlflow_spark_tools.*"])
    + ["mlflow_spark_tools._conf", "mlflow_spark_tools._conf.rate_limits",
       "mlflow_spark_tools._conf.jobs", "mlflow_spark_tools._conf.dashboards", "mlflow_spark_tools._conf.alerts"],
    package_dir={"mlflow_spark_tools._conf": "conf"},
    package_data={"mlflow_spark_tools": ["py.typed"],
                  "mlflow_spark_tools._conf": ["*.yaml", "rate_limits/*.yaml", "jobs/*.yaml",
                                               "dashboards/*.lvdash.json", "alerts/*.sql"]},
    install_requires=[
        "cloudpickle>=2.2",
        "databricks-sdk>=0.30",
        "click>=8.1",
        "PyYAML>=6.0",
        "tenacity>=8.2",
        "tqdm>=4.60",
        "pyarrow>=14.0.1",
        "pandas>=1.5.3",
        "requests>=2.28",
    ],
    extras_require={
        # Off Databricks, or on a runtime without MLflow: never on an ML runtime (see above).
        "mlflow": [f"mlflow-skinny>={MLFLOW_FLOOR}"],
        # Local engines. Databricks runtimes ship their own pyspark: never a hard requirement.
        "local": [
            "pyspark[connect]>=3.5.0",
            "pysail>=0.7.2",
            "delta-spark>=3.2",
        ],
        # build-tables --source database: Arrow-native readers of sqlite and PostgreSQL backend
        # stores (other databases are read through SQLAlchemy and their own driver).
        "database": [
            "adbc-driver-sqlite>=1.0",
            "adbc-driver-postgresql>=1.0",
        ],
        # `report`: charts (Altair) rendered offline to HTML, PNG and SVG (vl-convert).
        "report": ["altair>=5.4", "vl-convert-python>=1.6"],
        # `databricks bundle deploy` (databricks.yml) loads the jobs through these classes.
        "bundle": ["databricks-bundles>=1.22"],
        "dev": [
            "databricks-bundles>=1.22",
            "altair>=5.4",
            "vl-convert-python>=1.6",
            f"mlflow>={MLFLOW_FLOOR}",
            "scikit-learn>=1.3.0",
            "deltalake>=0.20",
            "pytest>=8",
            "pytest-timeout>=2.3",
            "psutil>=5.9",
            "ruff>=0.6",
            "mypy>=1.10",
            "import-linter>=2.1",
            # the tests' mlflow server on a PostgreSQL backend store
            "psycopg2-binary>=2.9",
            # the tests' FUSE mount with the semantics of Databricks' object-store mounts
            "mfusepy>=3.1",
            "types-PyYAML",
            "types-requests",
            # builds the wheel without an isolated build environment (no download in tests)
            "setuptools>=70.1",
        ],
    },
    entry_points={
        "console_scripts": [
            "mlflow-spark-tools=mlflow_spark_tools.cli:main",
        ],
        # Databricks python_wheel_task entry points (found by name in any group; this one puts
        # nothing on PATH). Keep in step with mlflow_spark_tools.cli.wheel_tasks.ENTRY_POINTS.
        "packages": [
            f"{name}=mlflow_spark_tools.cli.wheel_tasks:{name.replace('-', '_')}"
            for name in WHEEL_ENTRY_POINTS
        ],
    },
)
