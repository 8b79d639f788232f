# Databricks notebook source
# MAGIC %md
# MAGIC # SQL recipes over an experiment table
# MAGIC
# MAGIC `<database>.exp_<experiment_id>` holds one row per run: the run info columns (`run_id`,
# MAGIC `run_name`, `status`, `start_time`, `end_time`, `duration_seconds`, `parent_run_id`, ...),
# MAGIC params as `_p_<key>` (typed: bigint, double, boolean or string), the latest value of each
# MAGIC metric as `_m_<key>` and tags as `_t_<key>`. Its companion `exp_<experiment_id>_columns`
# MAGIC maps every MLflow key to its column (`column_name`, `kind`, `key`, `data_type`): a key
# MAGIC such as `val/loss` becomes `_m_val_loss`, and colliding keys get a suffix, so look names up
# MAGIC there rather than guessing them.
# MAGIC
# MAGIC Build or refresh the table first (the `quickstart` notebook or the build-tables job). Every
# MAGIC recipe prints its SQL: copy it into Databricks SQL or a dashboard. Table and column names go
# MAGIC through `mlflow_spark_tools.queries` and widget values become SQL literals, never raw SQL.

# COMMAND ----------

# ruff: noqa: E402 - each cell imports what it uses

dbutils.widgets.text("experiment_id", "", "Experiment id")  # noqa: F821
dbutils.widgets.text("database", "main.mlflow_exp", "Database (catalog.schema)")  # noqa: F821
dbutils.widgets.text("metric", "rmse", "Metric")  # noqa: F821
dbutils.widgets.dropdown("best", "lowest", ["lowest", "highest"], "Best value of the metric")  # noqa: F821
dbutils.widgets.text("top_n", "10", "Top N")  # noqa: F821
dbutils.widgets.text("days", "7", "Last N days")  # noqa: F821
dbutils.widgets.text("param", "", "Param to compare the metric by")  # noqa: F821
dbutils.widgets.text("steps", "10", "Last N steps (metric history)")  # noqa: F821
experiment_id = dbutils.widgets.get("experiment_id")  # noqa: F821
database = dbutils.widgets.get("database")  # noqa: F821
metric = dbutils.widgets.get("metric")  # noqa: F821
order = {"lowest": "ASC", "highest": "DESC"}[dbutils.widgets.get("best")]  # noqa: F821
top_n = int(dbutils.widgets.get("top_n"))  # noqa: F821
days = int(dbutils.widgets.get("days"))  # noqa: F821
param = dbutils.widgets.get("param")  # noqa: F821
steps = int(dbutils.widgets.get("steps"))  # noqa: F821
if top_n < 1 or days < 1 or steps < 1:
    raise ValueError("top_n, days and steps must be at least 1.")

# COMMAND ----------

from mlflow_spark_tools.queries import experiment_table_name, qualified_name, quote, sql_string

table = qualified_name(database, experiment_table_name(experiment_id))
columns_table = qualified_name(database, experiment_table_name(experiment_id) + "_columns")


def column(kind, key):
    """The quoted column that holds an MLflow key (kind: param, metric or tag)."""
    row = spark.sql(  # noqa: F821
        f"SELECT column_name FROM {columns_table} WHERE kind = {sql_string(kind)} AND key = {sql_string(key)}"
    ).first()
    if row is None:
        raise ValueError(f"Experiment {experiment_id} has no {kind} {key!r}: see {columns_table}.")
    return quote(row["column_name"])


def show(sql):
    """Print a recipe's SQL, then display its result."""
    print(sql)
    display(spark.sql(sql))  # noqa: F821


m = column("metric", metric)
# The runs that count: active, with a value of the metric that is not NaN.
counts = f"lifecycle_stage = 'active' AND {m} IS NOT NULL AND NOT isnan({m})"
show(f"SELECT kind, key, column_name, data_type FROM {columns_table} ORDER BY kind, key")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Best run by a metric

# COMMAND ----------

show(
    f"SELECT run_id, run_name, start_time, {m}\n"
    f"FROM {table}\n"
    f"WHERE {counts}\n"
    f"ORDER BY {m} {order}, start_time DESC, run_id\n"
    "LIMIT 1"
)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Top N runs

# COMMAND ----------

show(
    f"SELECT run_id, run_name, status, start_time, {m}\n"
    f"FROM {table}\n"
    f"WHERE {counts}\n"
    f"ORDER BY {m} {order}, start_time DESC, run_id\n"
    f"LIMIT {top_n}"
)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Runs of the last N days

# COMMAND ----------

show(
    f"SELECT run_id, run_name, status, start_time, duration_seconds, {m}\n"
    f"FROM {table}\n"
    f"WHERE start_time >= current_timestamp() - INTERVAL {days} DAYS\n"
    "ORDER BY start_time DESC, run_id"
)

# COMMAND ----------

# MAGIC %md
# MAGIC ## The params of the best runs side by side

# COMMAND ----------

params = [
    quote(r["column_name"])
    for r in spark.sql(  # noqa: F821
        f"SELECT column_name FROM {columns_table} WHERE kind = 'param' ORDER BY key"
    ).collect()
]
show(
    f"SELECT run_id, run_name, {', '.join([m, *params])}\n"
    f"FROM {table}\n"
    f"WHERE {counts}\n"
    f"ORDER BY {m} {order}, start_time DESC, run_id\n"
    f"LIMIT {top_n}"
)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Failed runs

# COMMAND ----------

show(
    f"SELECT run_id, run_name, status, start_time, end_time, duration_seconds\n"
    f"FROM {table}\n"
    "WHERE status IN ('FAILED', 'KILLED')\n"
    "ORDER BY start_time DESC, run_id"
)

# COMMAND ----------

# MAGIC %md
# MAGIC ## The metric by the values of one param

# COMMAND ----------

if param:
    p = column("param", param)
    show(
        f"SELECT {p}, count(*) AS runs, min({m}) AS min_value, avg({m}) AS avg_value, max({m}) AS max_value\n"
        f"FROM {table}\n"
        f"WHERE {counts}\n"
        f"GROUP BY {p}\n"
        f"ORDER BY {p}"
    )
else:
    print("Give the param widget a param key to compare the metric by.")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Over the metric history
# MAGIC
# MAGIC With `build-tables --metric-history all` (or a list of keys) the experiment also has
# MAGIC `exp_<experiment_id>_metrics`, one row per logged point (`run_id`, `key`, `column_name`,
# MAGIC `step`, `timestamp`, `value`), and its table gains per metric `_mmin_<key>` / `_mmax_<key>`
# MAGIC (the lowest / highest value at any step) with `_mminstep_<key>` / `_mmaxstep_<key>` (the
# MAGIC first step that reached it). The recipes: the best value any step reached, the curves of the
# MAGIC top runs, and the runs whose metric got worse over their last N steps.

# COMMAND ----------

history = qualified_name(database, experiment_table_name(experiment_id) + "_metrics")
has_history = spark.sql(  # noqa: F821
    f"SELECT 1 FROM {columns_table} WHERE kind = 'metric_min' AND key = {sql_string(metric)}"
).first() is not None
if has_history:
    best_at, best_step = (column("metric_min", metric), column("metric_min_step", metric)) if order == "ASC" \
        else (column("metric_max", metric), column("metric_max_step", metric))
    # The best value each run reached at any step, and the step where it first got there.
    show(
        f"SELECT run_id, run_name, {best_at} AS best_value, {best_step} AS best_step, {m} AS latest_value\n"
        f"FROM {table}\n"
        f"WHERE lifecycle_stage = 'active' AND {best_at} IS NOT NULL\n"
        f"ORDER BY best_value {order}, start_time DESC, run_id\n"
        f"LIMIT {top_n}"
    )
else:
    print(f"No metric history of {metric!r}: build the table with --metric-history {metric} (or all).")

# COMMAND ----------

if has_history:
    # The whole curve of each of the top runs (by their best value at any step): one row per
    # point, ready for a line chart of value by step per run.
    show(
        f"WITH top AS (\n"
        f"  SELECT run_id, {best_at} AS best_value FROM {table}\n"
        f"  WHERE lifecycle_stage = 'active' AND {best_at} IS NOT NULL\n"
        f"  ORDER BY best_value {order}, start_time DESC, run_id LIMIT {top_n})\n"
        f"SELECT h.run_id, h.step, h.value\n"
        f"FROM {history} h JOIN top ON h.run_id = top.run_id\n"
        f"WHERE h.key = {sql_string(metric)}\n"
        f"ORDER BY top.best_value {order}, h.run_id, h.step, h.timestamp"
    )

# COMMAND ----------

if has_history:
    # Runs whose metric got worse over their last N steps: the value at the last step against
    # the value at the first step of the window (NaN points left out).
    worse = ">" if order == "ASC" else "<"
    show(
        f"WITH points AS (\n"
        f"  SELECT run_id, step, value, max(step) OVER (PARTITION BY run_id) AS last_step\n"
        f"  FROM {history} WHERE key = {sql_string(metric)} AND NOT isnan(value)),\n"
        f"window_ends AS (\n"
        f"  SELECT run_id, min_by(value, step) AS window_start_value, max_by(value, step) AS last_value,\n"
        f"         min(step) AS window_start_step, max(step) AS last_step\n"
        f"  FROM points WHERE step >= last_step - {steps} GROUP BY run_id)\n"
        f"SELECT run_id, window_start_step, window_start_value, last_step, last_value,\n"
        f"       last_value - window_start_value AS change\n"
        f"FROM window_ends\n"
        f"WHERE last_value {worse} window_start_value\n"
        f"ORDER BY abs(last_value - window_start_value) DESC, run_id"
    )

# COMMAND ----------

# MAGIC %md
# MAGIC ## Datasets, logged models and the registry
# MAGIC
# MAGIC Every build also writes `exp_<experiment_id>_inputs`, one row per dataset input of a run
# MAGIC (`run_id`, `name`, `digest`, `source_type`, `source`, `context`, `schema`, `profile`,
# MAGIC `tags`), and, on tracking servers with MLflow 3 logged models, `exp_<experiment_id>_models`
# MAGIC (`model_id`, `name`, `source_run_id`, `status`, `params`, `metrics` per dataset, `tags`, ...).
# MAGIC `build-tables --registry` writes `registered_models` and `model_versions` (`name`,
# MAGIC `version`, `aliases`, `current_stage`, `source_run_id`, `model_id`, ...). The recipes: the
# MAGIC datasets of the top runs, the metrics of their models per dataset, and which runs are in
# MAGIC production.

# COMMAND ----------


def built(name, hint):
    """The quoted name of a table of the database, or None after printing ``hint`` when the
    table has not been built."""
    qualified = qualified_name(database, name)  # checks both names before they reach the catalog
    if spark.catalog.tableExists(f"{database}.{name}"):  # noqa: F821
        return qualified
    print(hint)
    return None


# The top runs by the metric, for the joins below.
top_runs = (
    f"top AS (\n"
    f"  SELECT run_id, run_name, start_time, {m} FROM {table}\n"
    f"  WHERE {counts}\n"
    f"  ORDER BY {m} {order}, start_time DESC, run_id LIMIT {top_n})"
)
inputs = built(experiment_table_name(experiment_id) + "_inputs",
               f"No dataset inputs table for experiment {experiment_id}: build its tables again.")
if inputs is not None:
    # The datasets each of the top runs logged (training, validation, ...), best run first.
    show(
        f"WITH {top_runs}\n"
        f"SELECT top.run_id, top.run_name, top.{m}, i.context, i.name AS dataset, i.digest, i.source\n"
        f"FROM top JOIN {inputs} i ON i.run_id = top.run_id\n"
        f"ORDER BY top.{m} {order}, top.start_time DESC, top.run_id, i.context, i.name"
    )

# COMMAND ----------

models = built(experiment_table_name(experiment_id) + "_models",
               f"No logged models table for experiment {experiment_id}: the tracking server has no MLflow 3 "
               "logged models.")
if models is not None:
    # The logged models of the top runs, with each of their metrics per dataset (a model
    # without metrics has one row with NULL metric columns).
    show(
        f"WITH {top_runs},\n"
        f"model_metrics AS (\n"
        f"  SELECT m.model_id, m.name, m.source_run_id, m.status, x.key, x.value, x.step, x.dataset_name\n"
        f"  FROM {models} m LATERAL VIEW OUTER explode(m.metrics) e AS x)\n"
        f"SELECT top.run_id, top.run_name, mm.model_id, mm.name AS model, mm.status, mm.key, mm.value, mm.step,\n"
        f"       mm.dataset_name\n"
        f"FROM top JOIN model_metrics mm ON mm.source_run_id = top.run_id\n"
        f"ORDER BY top.{m} {order}, top.start_time DESC, top.run_id, mm.model_id, mm.key, mm.dataset_name, mm.step"
    )

# COMMAND ----------

versions = built("model_versions", f"No model_versions table in {database}: run build-tables --registry to see "
                                   "which runs are in production.")
if versions is not None:
    # Which runs of this experiment are in production: the versions with the alias `champion`
    # or in the stage `Production` (workspace registry), with their source runs.
    show(
        f"SELECT v.name AS model, v.version, v.aliases, v.current_stage, r.run_id, r.run_name, r.start_time, r.{m}\n"
        f"FROM {versions} v JOIN {table} r ON r.run_id = v.source_run_id\n"
        "WHERE array_contains(v.aliases, 'champion') OR v.current_stage = 'Production'\n"
        "ORDER BY v.name, v.version DESC"
    )
