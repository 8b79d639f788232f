# Databricks notebook source
# MAGIC %md
# MAGIC # Experiment tables: quickstart
# MAGIC
# MAGIC Builds the flattened Delta table `exp_<experiment_id>` of an experiment and asks it for the
# MAGIC best run. Install the wheel on the cluster (or `%pip install` it) first.

# COMMAND ----------

# ruff: noqa: E402 - each cell imports what it uses

dbutils.widgets.text("experiment_id", "", "Experiment id")  # noqa: F821
dbutils.widgets.text("database", "main.mlflow_exp", "Database (catalog.schema)")  # noqa: F821
dbutils.widgets.text("metric", "rmse", "Metric")  # noqa: F821
experiment_id = dbutils.widgets.get("experiment_id")  # noqa: F821
database = dbutils.widgets.get("database")  # noqa: F821
metric = dbutils.widgets.get("metric")  # noqa: F821

# COMMAND ----------

from mlflow_spark_tools.build_tables import build_experiment_tables
from mlflow_spark_tools.config import load_settings

settings = load_settings().with_overrides(tables__database=database)
result = build_experiment_tables(settings, experiment_ids=[experiment_id], spark=spark)  # noqa: F821
for summary in result.summaries:
    print(summary)
if result.exit_code != 0:
    raise RuntimeError(f"Building the table failed: {[s.error for s in result.summaries if not s.ok]}")

# COMMAND ----------

from mlflow_spark_tools.engine import get_engine
from mlflow_spark_tools.queries import best_run, experiment_table_name, qualified_name, quote, sql_string

engine = get_engine(spark=spark)  # noqa: F821
best = best_run(experiment_id, metric, ascending=True, engine=engine, database=database)
if best is None:
    raise ValueError(f"No run of experiment {experiment_id} has a value for metric {metric!r}.")
print(best)

# COMMAND ----------

# The columns table maps the metric key to its column name.
table = qualified_name(database, experiment_table_name(experiment_id))
column = quote(spark.sql(  # noqa: F821
    f"SELECT column_name FROM {qualified_name(database, experiment_table_name(experiment_id) + '_columns')} "
    f"WHERE kind = 'metric' AND key = {sql_string(metric)}"
).first()["column_name"])
display(  # noqa: F821
    spark.sql(  # noqa: F821
        f"SELECT run_id, run_name, {column} FROM {table} "
        f"WHERE NOT isnan({column}) ORDER BY {column}, start_time DESC, run_id LIMIT 10"
    )
)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Charts
# MAGIC
# MAGIC The report of the table for the metric: parallel coordinates of the params and the metric,
# MAGIC the metric against each param, the top runs, and their metric curves where the table was
# MAGIC built with `metric_history`. Only the top and a bounded selection of runs reach the driver.
# MAGIC It needs the `report` extra (`%pip install 'mlflow-spark-tools[report]'`).
# MAGIC `report.save("/Volumes/.../report.html", "png")` writes it as a file that opens offline.

# COMMAND ----------

from mlflow_spark_tools.report import experiment_report

report = experiment_report(experiment_id, metric, engine=engine, database=database)
displayHTML(report.html())  # noqa: F821
