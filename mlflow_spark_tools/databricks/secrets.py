"""Reading a Databricks secret: through ``dbutils`` on a Databricks driver, else databricks-sdk
with its standard authentication. The value is never logged (the SDK's DEBUG log of the
response shows it as ``**REDACTED**``)."""

from __future__ import annotations

import base64

from mlflow_spark_tools.errors import InvalidConfigError


def read_secret(scope: str, key: str, what: str = "the secret") -> str:
    """The value of ``key`` in secret scope ``scope``.

    Raises:
        InvalidConfigError: the secret cannot be read (naming ``what``, the scope and the key).
    """
    try:  # a Databricks driver
        from pyspark.dbutils import DBUtils
        from pyspark.sql import SparkSession

        return str(DBUtils(SparkSession.builder.getOrCreate()).secrets.get(scope=scope, key=key))
    except ImportError:
        pass
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.errors import DatabricksError

    try:
        value = WorkspaceClient().secrets.get_secret(scope=scope, key=key).value
    except (DatabricksError, ValueError) as exc:
        raise InvalidConfigError(
            f"Could not read {what} from secret scope {scope!r}, key {key!r}: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from None
    return base64.b64decode(value or "").decode("utf-8")
