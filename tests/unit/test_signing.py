import sys
import types

import pytest

from mlflow_spark_tools.errors import InvalidConfigError
from mlflow_spark_tools.failed_runs.replay_job import replay_signing_key
from mlflow_spark_tools.failed_runs.signing import KEY_ENV, SigningKey, load_signing_key


@pytest.fixture
def databricks_driver(monkeypatch):
    """``pyspark.dbutils`` as a Databricks driver has it, holding one secret; records reads."""
    reads = []

    class Secrets:
        def get(self, scope, key):
            reads.append((scope, key))
            if (scope, key) != ("ml", "signing"):
                raise ValueError("Secret does not exist with scope: ml and key: nope")
            return "driver-secret-0123456789"

    class DBUtils:
        def __init__(self, spark):
            self.secrets = Secrets()

    module = types.ModuleType("pyspark.dbutils")
    module.DBUtils = DBUtils
    monkeypatch.setitem(sys.modules, "pyspark.dbutils", module)

    class Builder:
        def getOrCreate(self):
            return object()

    sql = types.ModuleType("pyspark.sql")
    sql.SparkSession = type("SparkSession", (), {"builder": Builder()})
    monkeypatch.setitem(sys.modules, "pyspark.sql", sql)
    return reads


def test_explicit_value_then_secret_scope_then_environment(monkeypatch, databricks_driver):
    monkeypatch.setenv(KEY_ENV, "environment-key-0123456789")
    assert load_signing_key("explicit-key-0123456789").verify(b"x", SigningKey("explicit-key-0123456789").sign(b"x"))
    from_scope = replay_signing_key("ml", "signing")
    assert from_scope.verify(b"x", SigningKey("driver-secret-0123456789").sign(b"x"))
    assert databricks_driver == [("ml", "signing")]
    from_env = load_signing_key()
    assert from_env.verify(b"x", SigningKey("environment-key-0123456789").sign(b"x"))
    monkeypatch.delenv(KEY_ENV)
    assert load_signing_key() is None


def test_half_a_secret_reference_is_a_usage_error():
    with pytest.raises(InvalidConfigError, match="both the secret scope and the secret key"):
        replay_signing_key("ml", None)


def test_the_key_never_shows_its_value():
    key = SigningKey("shown-nowhere-0123456789")
    assert "shown-nowhere" not in repr(key) + str(key) + f"{key}" + repr([key])
    with pytest.raises(InvalidConfigError, match="at least 16 bytes"):
        SigningKey("short")
