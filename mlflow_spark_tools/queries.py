"""Public face of the questions asked of experiment tables, and the SQL helpers to ask others.

``best_run`` and ``last_run`` answer from the tables when they exist and from the tracking
server otherwise; the identifier helpers build table names and literals that are safe to put
into SQL. Implementations: :mod:`mlflow_spark_tools.tables.queries`,
:mod:`mlflow_spark_tools.core.identifiers`.
"""

from mlflow_spark_tools.core.identifiers import experiment_table_name, qualified_name, quote, sql_string
from mlflow_spark_tools.tables.queries import RunChoice, best_run, last_run

__all__ = ["RunChoice", "best_run", "experiment_table_name", "last_run", "qualified_name", "quote",
           "sql_string"]
