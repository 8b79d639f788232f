"""HMAC-SHA256 signing of the pickled blobs in a failed-run store.

DBFS root is writable by every user of a workspace: a pickle found there is code that runs as
whoever unpickles it. Every blob the collector writes is signed with a key only the job's
owners hold, and the replayer unpickles a blob only when its signature verifies.

The key comes from, in order: an explicit value, the environment variable
``MLFLOW_SPARK_TOOLS_SIGNING_KEY`` (on Databricks, set it on the cluster as
``{{secrets/<scope>/<key>}}`` so executors have it), or a Databricks secret scope (through
``dbutils`` on a driver, else databricks-sdk).
"""

from __future__ import annotations

import hashlib
import hmac
import os

from mlflow_spark_tools.errors import InvalidConfigError

KEY_ENV = "MLFLOW_SPARK_TOOLS_SIGNING_KEY"


class SigningKey:
    """A secret key that never shows itself in ``repr``, ``str`` or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str | bytes) -> None:
        raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        if len(raw) < 16:
            raise InvalidConfigError("The signing key must be at least 16 bytes long.")
        self._value = raw

    def sign(self, data: bytes) -> str:
        """Hex HMAC-SHA256 of ``data``."""
        return hmac.new(self._value, data, hashlib.sha256).hexdigest()

    def verify(self, data: bytes, signature: str | None) -> bool:
        """Whether ``signature`` is this key's signature of ``data`` (constant-time compare)."""
        if not signature:
            return False
        return hmac.compare_digest(self.sign(data), str(signature))

    def __repr__(self) -> str:
        return "SigningKey(***)"

    __str__ = __repr__


def _secret_from_databricks(scope: str, key: str) -> str:
    try:  # a Databricks driver
        from pyspark.dbutils import DBUtils  # type: ignore[import-not-found]
        from pyspark.sql import SparkSession

        return DBUtils(SparkSession.builder.getOrCreate()).secrets.get(scope=scope, key=key)
    except ImportError:
        pass
    import base64

    from databricks.sdk import WorkspaceClient

    value = WorkspaceClient().secrets.get_secret(scope=scope, key=key).value
    return base64.b64decode(value).decode("utf-8")


def load_signing_key(
    value: str | bytes | SigningKey | None = None,
    secret_scope: str | None = None,
    secret_key: str | None = None,
) -> SigningKey | None:
    """The signing key from an explicit value, the environment or a Databricks secret.

    Returns None when no source holds a key.
    """
    if isinstance(value, SigningKey):
        return value
    if value:
        return SigningKey(value)
    env = os.environ.get(KEY_ENV)
    if env:
        return SigningKey(env)
    if secret_scope and secret_key:
        return SigningKey(_secret_from_databricks(secret_scope, secret_key))
    return None
