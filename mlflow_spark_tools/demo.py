"""``make demo``: a hyperparameter sweep on a local MLflow server, tables, and the best run.

Everything runs on this machine: a local ``mlflow server`` (sqlite) and the embedded Spark
engine with Delta. Files go under ``.demo/`` in the working directory.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import time
from pathlib import Path

from mlflow_spark_tools.build_tables import build_experiment_tables
from mlflow_spark_tools.config import load_settings
from mlflow_spark_tools.engine import start_embedded
from mlflow_spark_tools.local_server import LocalTrackingServer
from mlflow_spark_tools.output import format_rows, render_table
from mlflow_spark_tools.spark_arrow import to_arrow

EXPERIMENT = "diabetes-elasticnet-sweep"


def log_sweep(tracking_uri: str) -> str:
    """Train ElasticNet on scikit-learn's diabetes data for a grid of alpha and l1_ratio."""
    import numpy as np
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import ElasticNet
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score
    from sklearn.model_selection import train_test_split

    client = MlflowClient(tracking_uri)
    experiment_id = client.create_experiment(EXPERIMENT)
    x, y = load_diabetes(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=42)
    grid = itertools.product([0.001, 0.01, 0.1, 0.5, 1.0], [0.1, 0.5, 0.9])
    for alpha, l1_ratio in grid:
        model = ElasticNet(alpha=alpha, l1_ratio=l1_ratio, random_state=42, max_iter=5000)
        model.fit(x_train, y_train)
        pred = model.predict(x_test)
        run = client.create_run(experiment_id, run_name=f"enet-a{alpha}-l{l1_ratio}")
        now = int(time.time() * 1000)
        client.log_batch(
            run.info.run_id,
            params=[Param("alpha", str(alpha)), Param("l1_ratio", str(l1_ratio)),
                    Param("max_iter", "5000"), Param("solver", "coordinate-descent")],
            metrics=[
                Metric("rmse", float(np.sqrt(mean_squared_error(y_test, pred))), now, 0),
                Metric("mae", float(mean_absolute_error(y_test, pred)), now, 0),
                Metric("r2", float(r2_score(y_test, pred)), now, 0),
            ],
            tags=[RunTag("dataset", "sklearn.diabetes"), RunTag("model.family", "linear")],
        )
        client.set_terminated(run.info.run_id)
    return experiment_id


def main(root: str = ".demo") -> None:
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    base = Path(root).resolve()
    shutil.rmtree(base, ignore_errors=True)
    print("1. Starting a local MLflow tracking server (sqlite) ...", flush=True)
    with LocalTrackingServer(base / "mlflow") as server:
        print(f"   {server.url}")
        print("2. Logging a 15-run ElasticNet sweep on scikit-learn's diabetes data ...", flush=True)
        experiment_id = log_sweep(server.url)
        print(f"   experiment {EXPERIMENT!r} = id {experiment_id}")
        print("3. Building the Delta table on the embedded Spark engine ...", flush=True)
        engine = start_embedded(base / "warehouse")
        try:
            settings = load_settings().with_overrides(
                tracking_uri=server.url, engine__warehouse=str(base / "warehouse")
            )
            result = build_experiment_tables(settings, [experiment_id], engine=engine)
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
            print("4. The best runs, by one SQL query:\n")
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
""")


if __name__ == "__main__":
    main()
