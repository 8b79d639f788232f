"""A Spark job whose UDF trains and logs one run per row through the collector; the tests and
``bench/bench_collector.py`` both run it.

python tests/support/udf_sweep_job.py --engine classic|embedded --workload sample|ridge \
    --tracking-uri URL --experiment-id ID --store DIR --runs N --out results.json

``classic`` is local JVM Spark (``local[2]``: forked Python workers running many tasks each);
``embedded`` is the package's embedded engine. Workloads: ``sample`` logs the tests' sample run
(params, a metric history, tags, an artifact and a model); ``ridge`` fits a small model per step
and logs 10 params, a 20-step history of 3 metrics and 5 tags (and with ``--artifact-bytes`` an
artifact file). Writes ``{"results": [[index, status, run_id, payload_id], ...], "seconds",
"runs", "deferred"}``; the clock covers the Spark action only (workers started before).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def ridge_run(collector, experiment_id: str, i: int, artifact_bytes: int) -> tuple[str, str | None, str | None]:
    import logging
    import os
    import tempfile

    import numpy as np
    from sklearn.linear_model import Ridge

    logging.getLogger("mlflow_spark_tools").setLevel(logging.ERROR)
    rng = np.random.default_rng(i)
    x, y = rng.normal(size=(200, 5)), rng.normal(size=200)
    artifact = None
    if artifact_bytes:
        handle, artifact = tempfile.mkstemp(suffix=".bin")
        os.write(handle, rng.bytes(artifact_bytes))
        os.close(handle)
    try:
        with collector.start_run(experiment_id=experiment_id, run_name=f"run-{i:05d}") as run:
            run.log_params({f"p{k}": f"{i}-{k}" for k in range(10)})
            for step in range(20):
                model = Ridge(alpha=1.0 / (step + 1)).fit(x, y)
                run.log_metrics({"loss": float(np.mean((model.predict(x) - y) ** 2)),
                                 "score": float(model.score(x, y)), "alpha": 1.0 / (step + 1)}, step=step)
            run.set_tags({f"t{k}": str(k) for k in range(5)})
            if artifact:
                run.log_artifact(artifact, "reports")
    finally:
        if artifact:
            os.remove(artifact)
    return run.status, run.run_id, run.payload_id


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engine", choices=["classic", "embedded"], default="classic")
    parser.add_argument("--workload", choices=["sample", "ridge"], default="sample")
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--experiment-id", required=True)
    parser.add_argument("--store", required=True)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--artifact-bytes", type=int, default=0,
                        help="ridge: each run also logs an artifact file of this size.")
    parser.add_argument("--fail-fast-seconds", type=float, default=5.0)
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
        from mlflow_spark_tools.spark.engine import start_embedded

        engine = start_embedded(args.warehouse or str(Path(args.out).parent / "warehouse"))
        spark = engine.spark

    collector = FailedRunCollector(args.store, tracking_uri=args.tracking_uri,
                                   fail_fast_seconds=args.fail_fast_seconds)
    experiment_id, workload, artifact_bytes = args.experiment_id, args.workload, args.artifact_bytes

    def train(i: int) -> str:
        if workload == "ridge":
            status, run_id, payload_id = ridge_run(collector, experiment_id, i, artifact_bytes)
        else:
            status, run_id, payload_id = run_content.log_sample_run(collector, experiment_id, i)
        return json.dumps([i, status, run_id, payload_id])

    df = spark.range(args.runs).repartition(args.partitions)
    df.limit(1).collect()  # start the Python workers before the clock
    started = time.perf_counter()
    rows = df.select(F.udf(train, "string")(F.col("id").cast("int")).alias("r")).collect()
    seconds = time.perf_counter() - started
    results = [json.loads(r["r"]) for r in rows]
    Path(args.out).write_text(json.dumps({"results": results, "seconds": seconds, "runs": len(results),
                                          "deferred": sum(r[1] == "deferred" for r in results)}))
    spark.stop()
    if engine is not None:
        engine.stop()


if __name__ == "__main__":
    main()
