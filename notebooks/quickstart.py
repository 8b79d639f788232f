# Databricks notebook source
# MAGIC %md
# MAGIC # Experiment tables: quickstart
# MAGIC
# MAGIC Builds the flattened Delta table `exp_<experiment_id>` of an experiment and asks it for the
# MAGIC best run. Install the wheel on the cluster (or `%pip install` it) first.

# COMMAND ----------

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

# COMMAND ----------

from mlflow_spark_tools.engine import get_engine
from mlflow_spark_tools.identifiers import qualified_name, sql_string
from mlflow_spark_tools.queries import best_run

engine = get_engine(spark=spark)  # noqa: F821
print(best_run(experiment_id, metric, ascending=True, engine=engine, database=database))

# COMMAND ----------

# The columns table maps the metric key to its column name.
table = qualified_name(database, f"exp_{experiment_id}")
column = spark.sql(  # noqa: F821
    f"SELECT column_name FROM {qualified_name(database, f'exp_{experiment_id}_columns')} "
    f"WHERE kind = 'metric' AND key = {sql_string(metric)}"
).first()["column_name"]
display(  # noqa: F821
    spark.sql(  # noqa: F821
        f"SELECT run_id, run_name, {column} FROM {table} "
        f"WHERE NOT isnan({column}) ORDER BY {column} LIMIT 10"
    )
)
