"""Classic local JVM Spark (``local[2]``) with Delta Lake: the engine Databricks runs, from the
venv's pyspark and the Delta jars ``make jars`` puts into ``<venv>/delta-jars``.

Only one JVM session can live in a Python process; tests share one through the
``classic_engine`` fixture, and subprocesses (``spark-submit``) take :func:`submit_arguments`.
"""

from __future__ import annotations

import sys
from pathlib import Path

JARS_DIR = Path(sys.prefix) / "delta-jars"

# What makes a local session a Delta session, and what keeps a 2-core machine quick: few shuffle
# and snapshot partitions (Delta's default of 50 makes every small table read 50 tasks), no UI,
# no progress bars.
DELTA_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}
QUICK_CONF = {
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.shuffle.partitions": "2",
    "spark.default.parallelism": "2",
    "spark.databricks.delta.snapshotPartitions": "2",
    "spark.driver.memory": "2g",
}


def delta_jars() -> list[Path]:
    """The Delta jars of this venv, or an error saying how to get them."""
    jars = sorted(JARS_DIR.glob("*.jar"))
    if not jars:
        raise RuntimeError(f"No Delta Lake jars in {JARS_DIR}: run `make jars` (or `make compat-jars` for "
                           f"the compat venv) to fetch the ones that match this pyspark.")
    return jars


def session_conf(warehouse: Path) -> dict[str, str]:
    """Every setting of a local Delta session writing managed tables under ``warehouse``."""
    return {
        "spark.jars": ",".join(str(j) for j in delta_jars()),
        **DELTA_CONF,
        **QUICK_CONF,
        "spark.sql.warehouse.dir": str(warehouse),
    }


def submit_arguments(warehouse: Path) -> list[str]:
    """``spark-submit`` options for a local Delta application (``--master local[2]``)."""
    args = ["--master", "local[2]"]
    for key, value in session_conf(warehouse).items():
        if key == "spark.jars":
            args += ["--jars", value]
        elif key == "spark.driver.memory":
            args += ["--driver-memory", value]
        else:
            args += ["--conf", f"{key}={value}"]
    return args


def start_classic(warehouse: Path):  # -> Engine; pyspark is imported late
    """A classic local Delta session as an :class:`Engine` whose catalog manages its tables.

    It stays the active session, as in a ``spark-submit`` application: code that looks for the
    session of a surrounding runtime (``get_engine()`` with nothing given) finds it. pyspark
    cannot hold a Spark Connect session in the same process (its first one switches the whole
    process to Spark Connect), so a process runs its tests on one kind of engine only.
    """
    from pyspark.sql import SparkSession

    from mlflow_spark_tools.spark.engine import ACTIVE, Engine

    warehouse.mkdir(parents=True, exist_ok=True)
    builder = SparkSession.builder.master("local[2]").appName("mlflow-spark-tools-tests")
    for key, value in session_conf(warehouse).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return Engine(spark=spark, kind=ACTIVE)
