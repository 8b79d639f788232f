"""Reading an MLflow tracking server's backend database directly, read-only, into Arrow.

A table build with ``--source database`` reads runs, their latest metrics, params, tags, dataset
inputs and metric histories from the database the tracking server stores them in (the
``--backend-store-uri`` of ``mlflow server``), instead of asking the server through its REST API.
"""
