"""Vocabulary every layer shares, with nothing of this package below it: redaction of
credentials, SQL identifiers, the rate-limit classes of the REST endpoints, floats in JSON, and
the one module that wraps private MLflow and databricks-sdk internals."""
