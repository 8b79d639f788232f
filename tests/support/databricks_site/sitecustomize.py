"""Loaded at start-up by the Python processes of a Databricks-shaped ``mlflow server`` (this
folder is put first on their ``PYTHONPATH``).

An ``mlflow server`` keeps a logged model's files under ``<experiment root>/models/<id>``; a
Databricks workspace under ``<experiment root>/logged_models/<id>``, the shape MLflow's
Databricks repositories recognise (and ask the logged-model credential endpoints for). The
server's store is given the workspace's folder name, nothing else changes.
"""

import os

if os.environ.get("MLFLOW_SPARK_TOOLS_TEST_LOGGED_MODELS_FOLDER"):
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    SqlAlchemyStore.MODELS_FOLDER_NAME = os.environ["MLFLOW_SPARK_TOOLS_TEST_LOGGED_MODELS_FOLDER"]
