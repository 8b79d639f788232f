import pytest

from mlflow_spark_tools.config import RateLimitProfile, load_settings
from mlflow_spark_tools.errors import InvalidConfigError


def test_defaults_come_from_conf():
    s = load_settings(environ={})
    assert s.tables.database == "mlflow_exp"
    assert s.tables.page_size == 1000
    assert s.rate_limit_profile == "databricks"
    assert s.tracking_uri is None


def test_environment_overrides_defaults_and_flags_override_environment():
    env = {
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
        "MLFLOW_SPARK_TOOLS_DATABASE": "from_env",
        "SPARK_REMOTE": "sc://127.0.0.1:15002",
    }
    s = load_settings(environ=env)
    assert s.tracking_uri == "http://127.0.0.1:5000"
    assert s.tables.database == "from_env"
    assert s.engine.remote == "sc://127.0.0.1:15002"
    s2 = s.with_overrides(tables__database="from_flag", tracking_uri=None)
    assert s2.tables.database == "from_flag"
    assert s2.tracking_uri == "http://127.0.0.1:5000"


def test_overlay_file_and_unknown_keys(tmp_path):
    overlay = tmp_path / "conf.yaml"
    overlay.write_text("tables:\n  page_size: 500\n")
    s = load_settings(environ={"MLFLOW_SPARK_TOOLS_CONF": str(overlay)})
    assert s.tables.page_size == 500
    overlay.write_text("tables:\n  page_sise: 500\n")
    with pytest.raises(InvalidConfigError, match="page_sise"):
        load_settings(environ={"MLFLOW_SPARK_TOOLS_CONF": str(overlay)})


@pytest.mark.parametrize(
    "override, message",
    [
        ({"tables__page_size": 0}, "page_size"),
        ({"tables__database": "bad name"}, "bad name"),
        ({"engine__remote": "http://x"}, "sc://"),
    ],
)
def test_invalid_values_name_the_key(override, message):
    with pytest.raises(Exception, match=message):
        load_settings(environ={}).with_overrides(**override)


def test_profile_from_a_file_of_the_same_shape(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(
        "limits:\n  experiment_management: 1\n  search_runs: 2\n  log_batch: 3\n  other: 4\n"
        "safety_factor: 0.5\n"
    )
    profile = RateLimitProfile.load(str(path))
    assert profile.qps("search_runs") == 1.0
    path.write_text("limits:\n  search_runs: 2\n")
    with pytest.raises(InvalidConfigError, match="lacks limits"):
        RateLimitProfile.load(str(path))
    with pytest.raises(InvalidConfigError, match="Unknown rate-limit profile"):
        RateLimitProfile.load("no-such-profile")


def test_client_retries_per_operation_inherit_the_default(tmp_path):
    s = load_settings(environ={})
    assert s.client.mlflow_http_retries == 0
    default = s.client.policy("get_run")
    assert (default.attempts, default.initial_wait, default.max_wait, default.jitter) == (5, 1.0, 30.0, 1.0)
    search = s.client.policy("search_runs")
    assert (search.attempts, search.initial_wait) == (6, 2.0)
    assert s.client.policy("log_model").attempts == 3 and s.client.policy("log_model").max_wait == 30.0
    assert s.client.policy("an_operation_without_entry") == default
    overlay = tmp_path / "conf.yaml"
    overlay.write_text("client:\n  mlflow_http_retries: null\n  retries:\n    get_run: {attempts: 2}\n")
    s2 = load_settings(environ={"MLFLOW_SPARK_TOOLS_CONF": str(overlay)})
    assert s2.client.policy("get_run").attempts == 2 and s2.client.policy("get_run").jitter == 1.0
    assert s2.client.mlflow_http_retries is None
    assert s2.client.policy("search_runs").attempts == 6  # entries the overlay leaves alone stay


@pytest.mark.parametrize("text, message", [
    ("client:\n  retries:\n    get_runs: {attempts: 2}\n", "get_runs"),
    ("client:\n  retries:\n    get_run: {atempts: 2}\n", "atempts"),
    ("client:\n  retries:\n    get_run: {attempts: 0}\n", "attempts"),
    ("client:\n  retries:\n    default: {max_wait: -1}\n", "max_wait"),
    ("client:\n  mlflow_http_retries: -1\n", "mlflow_http_retries"),
])
def test_invalid_client_retries_name_the_key(tmp_path, text, message):
    overlay = tmp_path / "conf.yaml"
    overlay.write_text(text)
    with pytest.raises(InvalidConfigError, match=message):
        load_settings(environ={"MLFLOW_SPARK_TOOLS_CONF": str(overlay)})


def test_mlflow_http_retries_are_applied_only_when_not_set():
    from mlflow_spark_tools.tracking.client import HTTP_RETRIES_ENV, apply_mlflow_http_retries

    env: dict[str, str] = {}
    apply_mlflow_http_retries(0, env)
    assert env == {HTTP_RETRIES_ENV: "0"}
    env = {HTTP_RETRIES_ENV: "7"}
    apply_mlflow_http_retries(0, env)
    assert env[HTTP_RETRIES_ENV] == "7"
    env = {}
    apply_mlflow_http_retries(None, env)
    assert env == {}
