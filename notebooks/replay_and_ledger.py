# Databricks notebook source
# MAGIC %md
# MAGIC # Replaying deferred runs, and reading the replay ledger
# MAGIC
# MAGIC Replays the failed-run store that `FailedRunCollector` wrote (see `collector_in_udf`) into
# MAGIC the tracking server, pass after pass until nothing is pending, pacing every request to the
# MAGIC rate-limit profile. Each payload it handles becomes a row of the Delta table
# MAGIC `<database>.replay_log`: the run it became, or why it could not.
# MAGIC
# MAGIC * **replay_dir**: the store, `/Volumes/...` or `/dbfs/...`.
# MAGIC * **database**: where `replay_log` lives (`schema` or `catalog.schema`), and
# MAGIC   `replay_lease`: one replay at a time works a store; while this notebook holds it, a replay
# MAGIC   job of the same store replays nothing (and the other way round).
# MAGIC * **profile**: rate-limit profile, `databricks` (the documented workspace limits),
# MAGIC   `unlimited`, or the path of a YAML file of that shape.
# MAGIC * **secret_scope** / **secret_key**: where the signing key is, when the cluster has no
# MAGIC   `MLFLOW_SPARK_TOOLS_SIGNING_KEY` environment variable. Models are unpickled only when their
# MAGIC   signature verifies with the key the tasks had.
# MAGIC * **trust_unsigned**: `true` unpickles unsigned models too; only for a store nobody else
# MAGIC   can write to.
# MAGIC
# MAGIC The notebook fails at its end when a payload was quarantined or is still pending, so a job
# MAGIC running it shows that something needs attention.

# COMMAND ----------

# ruff: noqa: E402 - each cell imports what it uses

dbutils.widgets.text("replay_dir", "/Volumes/main/mlflow_exp/replay/failed_runs", "Failed-run store")  # noqa: F821
dbutils.widgets.text("database", "main.mlflow_exp", "Database of replay_log")  # noqa: F821
dbutils.widgets.text("profile", "databricks", "Rate-limit profile")  # noqa: F821
dbutils.widgets.text("secret_scope", "", "Signing key: secret scope")  # noqa: F821
dbutils.widgets.text("secret_key", "", "Signing key: secret key")  # noqa: F821
dbutils.widgets.dropdown("trust_unsigned", "false", ["false", "true"], "Trust unsigned models")  # noqa: F821
replay_dir = dbutils.widgets.get("replay_dir")  # noqa: F821
database = dbutils.widgets.get("database")  # noqa: F821
profile = dbutils.widgets.get("profile")  # noqa: F821
secret_scope = dbutils.widgets.get("secret_scope").strip() or None  # noqa: F821
secret_key = dbutils.widgets.get("secret_key").strip() or None  # noqa: F821
trust_unsigned = dbutils.widgets.get("trust_unsigned") == "true"  # noqa: F821

# COMMAND ----------

import mlflow

from mlflow_spark_tools.config import load_settings
from mlflow_spark_tools.engine import get_engine
from mlflow_spark_tools.replay import UNTIL_EMPTY, ReplayOptions, run_replay_job

# On Databricks the tracking URI comes from the notebook's context, not from MLFLOW_TRACKING_URI.
settings = load_settings().with_overrides(
    tracking_uri=mlflow.get_tracking_uri(), tables__database=database, rate_limit_profile=profile
)
options = ReplayOptions(
    replay_dir=replay_dir,
    mode=UNTIL_EMPTY,
    trust_unsigned=trust_unsigned,
    signing_secret_scope=secret_scope,
    signing_secret_key=secret_key,
)
engine = get_engine(spark=spark, warehouse=settings.engine.warehouse)  # noqa: F821
# Prints the summary as JSON: replayed, failed (quarantined), still pending, requests, 429s.
exit_code = run_replay_job(settings, options, engine=engine)

# COMMAND ----------

# MAGIC %md
# MAGIC ## The ledger
# MAGIC
# MAGIC The latest rows first. `status` is `replayed`, `resumed` (a replay that an earlier,
# MAGIC interrupted one had begun) or `failed`; `run_id` is the run a payload became.

# COMMAND ----------

from mlflow_spark_tools.queries import qualified_name
from mlflow_spark_tools.replay import LEDGER_TABLE, existing_ledger

ledger = qualified_name(database, LEDGER_TABLE)
has_ledger = existing_ledger(engine, database) is not None
if not has_ledger:
    print(f"{ledger} does not exist yet: nothing has been replayed into {database}.")


def show(sql):
    """Print a query of the ledger, then display its rows (when there is a ledger)."""
    if has_ledger:
        print(sql)
        display(spark.sql(sql))  # noqa: F821


show(
    f"SELECT payload_id, run_id, experiment_id, status, attempts, error, replayed_at FROM {ledger} "
    "ORDER BY replayed_at DESC, payload_id LIMIT 100"
)

# COMMAND ----------

# MAGIC %md
# MAGIC Every failure the ledger holds, with its error.

# COMMAND ----------

show(
    f"SELECT payload_id, experiment_id, attempts, error, replayed_at FROM {ledger} "
    "WHERE status = 'failed' ORDER BY replayed_at DESC, payload_id"
)

# COMMAND ----------

# MAGIC %md
# MAGIC Payloads quarantined now (their latest row is a failure), with the reason. Their documents
# MAGIC are in `<replay_dir>/failed/`, each beside a `<payload_id>.reason.json`; to retry one after
# MAGIC fixing the cause, move `failed/<payload_id>.json` back to `pending/`. Files in `pending/` that
# MAGIC are not run documents at all are quarantined there too, but have no ledger row.

# COMMAND ----------

show(
    "SELECT payload_id, max_by(error, replayed_at) AS reason, max(replayed_at) AS quarantined_at "
    f"FROM {ledger} GROUP BY payload_id HAVING max_by(status, replayed_at) = 'failed' "
    "ORDER BY quarantined_at DESC, payload_id"
)

# COMMAND ----------

if exit_code != 0:
    raise RuntimeError(
        f"The replay finished with exit code {exit_code}: payloads were quarantined, are still pending, "
        "or the ledger could not be written (see the summary above)."
    )
