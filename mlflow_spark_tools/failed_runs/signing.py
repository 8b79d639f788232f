"""HMAC-SHA256 signing of the pickled blobs in a failed-run store.

DBFS root is writable by every user of a workspace: a pickle found there is code that runs as
whoever unpickles it. Every blob the collector writes is signed with a key only the job's
owners hold, and the replayer unpickles a blob only when its signature verifies.

The key comes from, in order: an explicit value; for the replay job, a Databricks secret scope
and key when both are given (:mod:`mlflow_spark_tools.databricks.secrets`); the environment
variable ``MLFLOW_SPARK_TOOLS_SIGNING_KEY``. Executors that
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


def load_signing_key(value: str | bytes | SigningKey | None = None) -> SigningKey | None:
    """The signing key from an explicit value, else the environment; None when neither holds
    one. (The replay job reads a Databricks secret scope first when it is given one:
    :func:`mlflow_spark_tools.failed_runs.replay_job.replay_signing_key`.)"""
    if isinstance(value, SigningKey):
        return value
    if value:
        return SigningKey(value)
    env = os.environ.get(KEY_ENV)
    if env:
        return SigningKey(env)
    return None
