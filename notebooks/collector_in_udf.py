# Databricks notebook source
# MAGIC %md
# MAGIC # Logging runs from Spark tasks: the failed-run collector
# MAGIC
# MAGIC Every row of a Spark DataFrame trains a small scikit-learn model inside `mapInPandas` and
# MAGIC logs its run (params, a metric with one point per epoch, the model) through
# MAGIC `FailedRunCollector`. When the tracking server answers 429, a task neither waits for
# MAGIC minutes nor fails: after `fail_fast_seconds` the whole run goes to the failed-run store in
# MAGIC `replay_dir`, and the `replay_and_ledger` notebook logs it later within the rate limits.
# MAGIC
# MAGIC * **experiment_id**, or **experiment_name** when the id is empty (created if missing).
# MAGIC * **replay_dir**: storage every node of the cluster sees, a Unity Catalog volume
# MAGIC   (`/Volumes/<catalog>/<schema>/<volume>/failed_runs`) or DBFS (`/dbfs/ml/failed_runs`).
# MAGIC * **num_runs**: rows of the sweep, one run each.
# MAGIC
# MAGIC ### Signing key
# MAGIC
# MAGIC The models of deferred runs are stored as pickles, and the replay unpickles a model only if
# MAGIC its signature verifies with the same key. On job clusters, set the key as a cluster
# MAGIC environment variable, so that every executor has it and nothing else carries it:
# MAGIC
# MAGIC     MLFLOW_SPARK_TOOLS_SIGNING_KEY={{secrets/<scope>/<key>}}
# MAGIC
# MAGIC and leave **secret_scope** and **secret_key** empty. When they are given, this notebook reads
# MAGIC the key on the driver with `dbutils.secrets.get` and passes it to the collector, which ships
# MAGIC it inside every task closure Spark serializes and sends to the executors: convenient on an
# MAGIC interactive cluster, not what a shared or job cluster should do.
# MAGIC The replay must have the same key (see `replay_and_ledger`).

# COMMAND ----------

# ruff: noqa: E402 - each cell imports what it uses

dbutils.widgets.text("experiment_id", "", "Experiment id")  # noqa: F821
dbutils.widgets.text("experiment_name", "", "Experiment name (when no id)")  # noqa: F821
dbutils.widgets.text("replay_dir", "/Volumes/main/mlflow_exp/replay/failed_runs", "Failed-run store")  # noqa: F821
dbutils.widgets.text("num_runs", "16", "Runs")  # noqa: F821
dbutils.widgets.text("secret_scope", "", "Signing key: secret scope")  # noqa: F821
dbutils.widgets.text("secret_key", "", "Signing key: secret key")  # noqa: F821
experiment_id = dbutils.widgets.get("experiment_id").strip()  # noqa: F821
experiment_name = dbutils.widgets.get("experiment_name").strip()  # noqa: F821
replay_dir = dbutils.widgets.get("replay_dir")  # noqa: F821
num_runs = int(dbutils.widgets.get("num_runs"))  # noqa: F821
secret_scope = dbutils.widgets.get("secret_scope").strip()  # noqa: F821
secret_key = dbutils.widgets.get("secret_key").strip()  # noqa: F821
if num_runs < 1:
    raise ValueError("num_runs must be at least 1.")
if bool(secret_scope) != bool(secret_key):
    raise ValueError("Give both secret_scope and secret_key, or neither.")

# COMMAND ----------

from mlflow_spark_tools.client import RetryingClient
from mlflow_spark_tools.config import load_settings

if not experiment_id:
    if not experiment_name:
        raise ValueError("Give experiment_id or experiment_name.")
    experiment_id = RetryingClient.from_settings(load_settings()).get_or_create_experiment(experiment_name)
print(f"experiment {experiment_id}")

# COMMAND ----------

from mlflow_spark_tools.collector import FailedRunCollector

signing_key = None
if secret_scope:
    signing_key = dbutils.secrets.get(scope=secret_scope, key=secret_key)  # noqa: F821
# Plain and picklable: Spark ships it to the executors inside the task closure.
collector = FailedRunCollector(replay_dir, signing_key=signing_key)
print(collector)

# COMMAND ----------

import pandas as pd

EPOCHS = 5
ALPHAS = (1e-4, 1e-3, 1e-2, 1e-1)
RESULT_COLUMNS = ["run_index", "run_name", "alpha", "status", "run_id", "payload_id"]
RESULT_SCHEMA = "run_index INT, run_name STRING, alpha DOUBLE, status STRING, run_id STRING, payload_id STRING"


def train_and_log(batches):
    """Runs on the executors: one run per row, an SGD regressor trained on synthetic data."""
    import numpy as np
    from sklearn.linear_model import SGDRegressor

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    y = x @ np.array([1.5, -2.0, 0.5]) + rng.normal(scale=0.1, size=200)
    for batch in batches:
        results = []
        for index in batch["id"].tolist():
            alpha = ALPHAS[index % len(ALPHAS)]
            run_name = f"sgd-{index:04d}"
            with collector.start_run(experiment_id=experiment_id, run_name=run_name) as run:
                run.log_params({"alpha": alpha, "epochs": EPOCHS})
                model = SGDRegressor(alpha=alpha, random_state=index)
                for epoch in range(EPOCHS):
                    model.partial_fit(x, y)
                    rmse = float(np.sqrt(np.mean((model.predict(x) - y) ** 2)))
                    run.log_metric("rmse", rmse, step=epoch)
                # explicit requirements: inferring them starts a Python process per model
                run.log_model(model, "model", flavor="sklearn", pip_requirements=["scikit-learn"])
            results.append((index, run_name, alpha, run.status, run.run_id, run.payload_id))
        yield pd.DataFrame.from_records(results, columns=RESULT_COLUMNS)


# One task per run, so that the runs train and log in parallel.
sweep = spark.range(num_runs).repartition(num_runs).mapInPandas(train_and_log, RESULT_SCHEMA)  # noqa: F821

# COMMAND ----------

# MAGIC %md
# MAGIC Collected once: every further Spark action on `sweep` would train and log the runs again.
# MAGIC A `logged` run has its `run_id`. A `deferred` run has a `payload_id` in the store, and a
# MAGIC `run_id` too if the run was created before the rate limit hit; after the replay the ledger
# MAGIC table `replay_log` maps every payload id to its run id.

# COMMAND ----------

results = sweep.toPandas().sort_values("run_index", ignore_index=True)
display(results)  # noqa: F821
print(results["status"].value_counts().to_dict())
if (results["status"] == "deferred").any():
    print(f"Replay the deferred runs with the replay_and_ledger notebook, replay_dir={replay_dir}")
