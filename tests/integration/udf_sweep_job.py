"""A Spark job whose UDF trains and logs one run per row through the collector.

    python udf_sweep_job.py --engine classic|embedded --tracking-uri URL --experiment-id ID \
        --store DIR --runs N --out results.json

``classic`` is local JVM Spark (``local[2]``: forked Python workers running many tasks each);
``embedded`` is the package's embedded engine. Writes [[index, status, run_id, payload_id], ...].
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engine", choices=["classic", "embedded"], required=True)
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--experiment-id", required=True)
    parser.add_argument("--store", required=True)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--out", required=True)
    parser.add_argument("--warehouse", default=None)
    args = parser.parse_args()

    import cloudpickle
    from pyspark.sql import functions as F

    from mlflow_spark_tools.collector import FailedRunCollector
    from tests.integration import run_content

    # the workers may not have this repository on their path: ship the helper by value
    cloudpickle.register_pickle_by_value(run_content)

    engine = None
    if args.engine == "classic":
        from pyspark.sql import SparkSession

        spark = (SparkSession.builder.master("local[2]").appName("udf-sweep")
                 .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "4")
                 .getOrCreate())
    else:
        from mlflow_spark_tools.engine import start_embedded

        engine = start_embedded(args.warehouse or str(Path(args.out).parent / "warehouse"))
        spark = engine.spark

    collector = FailedRunCollector(args.store, tracking_uri=args.tracking_uri, fail_fast_seconds=2)
    experiment_id = args.experiment_id

    def train(i: int) -> str:
        status, run_id, payload_id = run_content.log_sample_run(collector, experiment_id, i)
        return json.dumps([i, status, run_id, payload_id])

    started = time.monotonic()
    df = spark.range(args.runs).repartition(args.partitions)
    rows = df.select(F.udf(train, "string")(F.col("id").cast("int")).alias("r")).collect()
    seconds = time.monotonic() - started
    Path(args.out).write_text(json.dumps({"results": [json.loads(r["r"]) for r in rows], "seconds": seconds}))
    spark.stop()
    if engine is not None:
        engine.stop()


if __name__ == "__main__":
    main()
