"""Spark-native MLflow tools for Databricks.

Flattened per-experiment Delta tables (``exp_<experiment_id>``) so that "which run is best?"
is one SQL query, and the tools around them.
"""

__version__ = "0.1.0"
