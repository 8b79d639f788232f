"""HMAC-SHA256 signing of the pickled blobs in a failed-run store.

DBFS root is writable by every user of a workspace: a pickle found there is code that runs as
whoever unpickles it. Every blob the collector writes is signed with a key only the job's
owners hold, and the replayer unpickles a blob only when its signature verifies.

The key comes from, in order: an explicit value; a Databricks secret scope and key when both
are given (through ``dbutils`` on a Databricks driver, else databricks-sdk with its standard
authentication); the environment variable ``MLFLOW_SPARK_TOOLS_SIGNING_KEY``. Executors that
run the collector read the environment: on a Databricks cluster set the variable to
``{{secrets/<scope>/<key>}}`` and Databricks fills it from the secret. The key's value is never
logged or printed.
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
    from databricks.sdk.errors import DatabricksError

    # The SDK's DEBUG log of the response shows the secret's "value" as **REDACTED**.
    try:
        value = WorkspaceClient().secrets.get_secret(scope=scope, key=key).value
    except (DatabricksError, ValueError) as exc:
        raise InvalidConfigError(
            f"Could not read the signing key from secret scope {scope!r}, key {key!r}: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from None
    return base64.b64decode(value or "").decode("utf-8")


def load_signing_key(
    value: str | bytes | SigningKey | None = None,
    secret_scope: str | None = None,
    secret_key: str | None = None,
) -> SigningKey | None:
    """The signing key from an explicit value, the environment or a Databricks secret.

    Returns None when no source holds a key. A secret scope given with its key is asked even
    when the environment holds a key: what a caller names explicitly wins.
    """
    if isinstance(value, SigningKey):
        return value
    if value:
        return SigningKey(value)
    if secret_scope and secret_key:
        return SigningKey(_secret_from_databricks(secret_scope, secret_key))
    if bool(secret_scope) != bool(secret_key):
        raise InvalidConfigError("Give both the secret scope and the secret key of the signing key.")
    env = os.environ.get(KEY_ENV)
    if env:
        return SigningKey(env)
    return None
