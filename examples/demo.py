"""``make demo`` (``python examples/demo.py``): a sweep in Spark UDFs under rate limits, its
replay, tables, the best run.

Everything runs on this machine: a local ``mlflow server`` (sqlite) behind the rate-limit
proxy, and the embedded Spark engine with Delta. Files go under ``.demo/`` in the working
directory.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import secrets
import shutil
import sys
import time
from pathlib import Path

# the local tracking server is shared with the tests and benchmarks (tests/support)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlflow import MlflowClient

from mlflow_spark_tools.build_tables import build_experiment_tables
from mlflow_spark_tools.collector import FailedRunCollector
from mlflow_spark_tools.config import RateLimitProfile, load_settings
from mlflow_spark_tools.failed_runs.ledger import write_ledger
from mlflow_spark_tools.failed_runs.signing import KEY_ENV, load_signing_key
from mlflow_spark_tools.replay import DeltaLease, Replayer
from mlflow_spark_tools.spark.arrow import to_arrow
from mlflow_spark_tools.spark.engine import Engine, start_embedded
from mlflow_spark_tools.tools.output import format_rows, render_table
from mlflow_spark_tools.tools.proxy import RateLimitProxy
from tests.support.local_server import LocalTrackingServer

EXPERIMENT = "diabetes-elasticnet-sweep"


GRID = list(itertools.product([0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0], [0.1, 0.5, 0.9]))
# Tight limits so that a sweep of a few dozen runs meets 429s, as thousands of runs on
# Databricks' documented limits would.
DEMO_LIMITS = {"experiment_management": 7, "search_runs": 7, "log_batch": 2, "other": 20}


def train_and_log(collector: FailedRunCollector, experiment_id: str, alpha: float, l1_ratio: float) -> str:
    """One task of the sweep: train ElasticNet on scikit-learn's diabetes data and log it."""
    import warnings

    import numpy as np
    from sklearn.datasets import load_diabetes
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import ElasticNet
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score
    from sklearn.model_selection import train_test_split

    warnings.simplefilter("ignore", ConvergenceWarning)  # the early epochs stop short on purpose
    x, y = load_diabetes(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=42)
    with collector.start_run(experiment_id=experiment_id, run_name=f"enet-a{alpha}-l{l1_ratio}",
                             tags={"dataset": "sklearn.diabetes", "model.family": "linear"}) as run:
        run.log_params({"alpha": alpha, "l1_ratio": l1_ratio, "max_iter": 5000,
                        "solver": "coordinate-descent"})
        model = ElasticNet(alpha=alpha, l1_ratio=l1_ratio, random_state=42, max_iter=5000, warm_start=True)
        for epoch, iterations in enumerate((50, 200, 5000)):  # a metric history with steps
            model.set_params(max_iter=iterations)
            model.fit(x_train, y_train)
            run.log_metric("rmse", float(np.sqrt(mean_squared_error(y_test, model.predict(x_test)))), step=epoch)
        pred = model.predict(x_test)
        run.log_metrics({"mae": float(mean_absolute_error(y_test, pred)), "r2": float(r2_score(y_test, pred))})
        run.log_model(model, "model", flavor="sklearn", pip_requirements=["scikit-learn"])
    return json.dumps({"status": run.status, "run_id": run.run_id, "payload_id": run.payload_id})


def sweep_in_spark(engine: Engine, collector: FailedRunCollector, experiment_id: str) -> list[dict]:
    """Run the sweep as a Spark job: one UDF call per grid point, four tasks at once."""
    from pyspark.sql import functions as F

    def task(alpha, l1_ratio):  # no type hints: Spark would take it for a pandas UDF
        return train_and_log(collector, experiment_id, alpha, l1_ratio)

    grid = engine.spark.createDataFrame(GRID, "alpha DOUBLE, l1_ratio DOUBLE").repartition(4)
    rows = grid.select(F.udf(task, "string")("alpha", "l1_ratio").alias("r")).collect()
    return [json.loads(r["r"]) for r in rows]


def main(root: str = ".demo") -> None:
    logging.basicConfig(level=logging.ERROR)
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    # model blobs written by the collector are signed; the replay verifies them
    os.environ.setdefault(KEY_ENV, secrets.token_hex(32))
    base = Path(root).resolve()
    shutil.rmtree(base, ignore_errors=True)
    store = base / "failed_runs"
    profile = RateLimitProfile(name="demo", limits=DEMO_LIMITS, safety_factor=0.9)
    print("1. Starting a local MLflow tracking server (sqlite) and a rate-limit proxy in front of it",
          flush=True)
    with LocalTrackingServer(base / "mlflow") as server, RateLimitProxy(server.url, profile) as proxy:
        print(f"   server {server.url}, proxy {proxy.url} "
              f"(limits per second: {', '.join(f'{k} {v}' for k, v in DEMO_LIMITS.items())})")
        experiment_id = MlflowClient(server.url).create_experiment(EXPERIMENT)
        engine = start_embedded(base / "warehouse")
        try:
            print(f"2. A {len(GRID)}-run ElasticNet sweep in Spark UDFs, logging through the proxy "
                  "with FailedRunCollector ...", flush=True)
            collector = FailedRunCollector(store, tracking_uri=proxy.url, fail_fast_seconds=2)
            started = time.perf_counter()
            results = sweep_in_spark(engine, collector, experiment_id)
            deferred = [r for r in results if r["status"] == "deferred"]
            stats = proxy.counters.as_dict()
            print(f"   {len(results)} tasks finished in {time.perf_counter() - started:.1f}s: "
                  f"{len(results) - len(deferred)} runs logged, {len(deferred)} deferred to {store}")
            print(f"   the proxy answered {sum(stats['rate_limited'].values())} of "
                  f"{sum(stats['requests'].values())} requests with 429")
            for r in deferred[:3]:
                print(f"     deferred: run_id={r['run_id'] or '-'} payload_id={r['payload_id']}")

            print("3. Replaying the deferred runs within the limits ...", flush=True)
            proxy.reset()
            lease = DeltaLease(engine, "mlflow_exp", store)  # one replay at a time works the store
            replayer = Replayer(str(store), proxy.url, profile, lease=lease, max_workers=8,
                                signing_key=load_signing_key())
            try:
                summary = replayer.run_until_empty(pause=1.0)
            finally:
                replayer.close()
            write_ledger(engine, "mlflow_exp", summary.ledger)
            print("   " + json.dumps(summary.as_dict()))
            print(f"   ledger: mlflow_exp.replay_log ({len(summary.ledger)} rows)")

            print("4. Building the Delta table on the embedded Spark engine ...", flush=True)
            settings = load_settings().with_overrides(
                tracking_uri=server.url, engine__warehouse=str(base / "warehouse")
            )
            result = build_experiment_tables(settings, experiment_ids=[experiment_id], engine=engine)
            s = result.summaries[0]
            print(render_table(
                ["table", "runs", "columns added", "seconds"],
                [[s.table, str(s.row_count), str(len(s.columns_added)), f"{s.seconds:.2f}"]],
            ))
            table = f"mlflow_exp.exp_{experiment_id}"
            query = (
                f"SELECT run_id, run_name, _p_alpha, _p_l1_ratio, _m_rmse, _m_r2\n"
                f"FROM {table}\nWHERE NOT isnan(_m_rmse)\nORDER BY _m_rmse\nLIMIT 3"
            )
            print("5. The best runs, by one SQL query:\n")
            print("   " + query.replace("\n", "\n   ") + "\n")
            print(format_rows(to_arrow(engine.spark.sql(query))))
            columns = to_arrow(engine.spark.sql(
                f"SELECT column_name, kind, key, data_type FROM {table}_columns "
                f"WHERE kind <> 'info' ORDER BY kind, column_name"
            ))
            print("\n   Columns and the MLflow keys they hold:")
            print(format_rows(columns))
        finally:
            engine.stop()
    print(f"""
Query further (the tables stay under {base / 'warehouse'}):

  .venv/bin/mlflow-spark-tools --warehouse {base / 'warehouse'} sql \\
      "SELECT _p_l1_ratio, min(_m_rmse) AS best_rmse FROM {table} GROUP BY _p_l1_ratio"
  .venv/bin/mlflow-spark-tools --warehouse {base / 'warehouse'} best-run \\
      --experiment-id {experiment_id} --metric r2 --descending
  .venv/bin/mlflow-spark-tools --warehouse {base / 'warehouse'} sql \\
      "SELECT payload_id, run_id, status FROM mlflow_exp.replay_log"
  .venv/bin/mlflow-spark-tools --warehouse {base / 'warehouse'} report \\
      --experiment-id {experiment_id} --metric rmse --out {base / 'report.html'}   # charts; opens offline
""")


if __name__ == "__main__":
    main()
