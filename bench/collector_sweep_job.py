"""The Spark job of ``bench_collector.py``: a UDF sweep logging one run per row.

    python bench/collector_sweep_job.py --tracking-uri URL --experiment-id ID --store DIR \
        --runs N --out result.json

Classic local JVM Spark (``local[2]``); each task fits a small model and logs 10 params, a
20-step history of 3 metrics and 5 tags (and with ``--artifact-bytes`` an artifact file)
through ``FailedRunCollector``. Writes the job's wall
time (the Spark action only, session start excluded) and how many runs were deferred.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--experiment-id", required=True)
    parser.add_argument("--store", required=True)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--out", required=True)
    parser.add_argument("--artifact-bytes", type=int, default=0,
                        help="Each run also logs an artifact file of this size.")
    args = parser.parse_args()

    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    from mlflow_spark_tools.collector import FailedRunCollector

    spark = (SparkSession.builder.master("local[2]").appName("collector-bench")
             .config("spark.ui.enabled", "false").getOrCreate())
    collector = FailedRunCollector(args.store, tracking_uri=args.tracking_uri)
    experiment_id = args.experiment_id
    artifact_bytes = args.artifact_bytes

    def task(i):
        import logging

        import numpy as np
        from sklearn.linear_model import Ridge

        logging.getLogger("mlflow_spark_tools").setLevel(logging.ERROR)
        rng = np.random.default_rng(i)
        x, y = rng.normal(size=(200, 5)), rng.normal(size=200)
        artifact = None
        if artifact_bytes:
            import os
            import tempfile

            handle, artifact = tempfile.mkstemp(suffix=".bin")
            os.write(handle, rng.bytes(artifact_bytes))
            os.close(handle)
        with collector.start_run(experiment_id=experiment_id, run_name=f"run-{i:05d}") as run:
            run.log_params({f"p{k}": f"{i}-{k}" for k in range(10)})
            for step in range(20):
                model = Ridge(alpha=1.0 / (step + 1)).fit(x, y)
                run.log_metrics({"loss": float(np.mean((model.predict(x) - y) ** 2)),
                                 "score": float(model.score(x, y)), "alpha": 1.0 / (step + 1)}, step=step)
            run.set_tags({f"t{k}": str(k) for k in range(5)})
            if artifact:
                run.log_artifact(artifact, "reports")
        if artifact:
            os.remove(artifact)
        return run.status

    df = spark.range(args.runs).repartition(args.partitions)
    df.limit(1).collect()  # start the Python workers before the clock
    started = time.perf_counter()
    statuses = [r["s"] for r in df.select(F.udf(task, "string")(F.col("id").cast("int")).alias("s")).collect()]
    seconds = time.perf_counter() - started
    Path(args.out).write_text(json.dumps({"seconds": seconds, "runs": len(statuses),
                                          "deferred": statuses.count("deferred")}))
    spark.stop()


if __name__ == "__main__":
    main()
