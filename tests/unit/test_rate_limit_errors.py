import pytest
from databricks.sdk.errors import TooManyRequests
from databricks.sdk.errors.platform import (
    InvalidParameterValue,
    RequestLimitExceeded,
    ResourceExhausted,
    TemporarilyUnavailable,
)
from mlflow.exceptions import MlflowException, RestException

from mlflow_spark_tools.tracking.rate_limit_errors import (
    PERMANENT,
    RATE_LIMITED,
    TRANSIENT,
    certainly_not_processed,
    classify,
    error_summary,
    exception_chain,
    is_rate_limited,
    is_retryable,
)

MLFLOW3_HTTP = (
    "API request to http://127.0.0.1:5000/api/2.0/mlflow/runs/create failed with exception "
    "HTTPConnectionPool(host='127.0.0.1', port=5000): Max retries exceeded with url: "
    "/api/2.0/mlflow/runs/create (Caused by ResponseError('too many 429 error responses'))"
)


def _raised_from(outer, inner):
    try:
        try:
            raise inner
        except BaseException as exc:
            raise outer from exc
    except BaseException as exc:
        return exc


def _raised_while_handling(outer, inner):
    try:
        try:
            raise inner
        except BaseException:
            raise outer  # noqa: B904 - the implicit __context__ is what is tested
    except BaseException as exc:
        return exc


@pytest.mark.parametrize(
    "exc",
    [
        MlflowException(MLFLOW3_HTTP, error_code="INTERNAL_ERROR"),
        MlflowException("API request to endpoint /api/2.0/mlflow/runs/log-batch failed with error "
                        "code 429 != 200. Response body: ''"),
        RestException({"error_code": "REQUEST_LIMIT_EXCEEDED", "message": "slow down"}),
        RestException({"error_code": "RESOURCE_EXHAUSTED", "message": "Too many requests"}),
        TooManyRequests("Too many requests"),
        RequestLimitExceeded("Rate limit"),
        ResourceExhausted("RESOURCE_EXHAUSTED: Too many requests"),
        Exception("RPC token bucket limit has been exceeded"),
        _raised_from(TimeoutError("Timed out after 0:08:20"), RequestLimitExceeded("limit")),
        _raised_while_handling(TimeoutError("retry timeout"), ResourceExhausted("exhausted")),
        _raised_from(RuntimeError("task failed"), _raised_from(ValueError("x"), TooManyRequests("y"))),
    ],
)
def test_every_form_of_a_rate_limit(exc):
    assert classify(exc) == RATE_LIMITED
    assert is_rate_limited(exc) and is_retryable(exc)


@pytest.mark.parametrize(
    "exc",
    [
        MlflowException("API request to http://h/api/2.0/mlflow/runs/get failed with exception "
                        "HTTPConnectionPool(host='h', port=1): Max retries exceeded with url: x "
                        "(Caused by NewConnectionError('Connection refused'))", error_code="INTERNAL_ERROR"),
        MlflowException("API request to endpoint /x failed with error code 503 != 200"),
        RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "later"}),
        ConnectionResetError("Connection reset by peer"),
        TimeoutError("timed out"),
        TemporarilyUnavailable("busy"),
        _raised_from(MlflowException("wrapped"), ConnectionResetError("reset")),
    ],
)
def test_transient_errors_retry_but_are_not_rate_limits(exc):
    assert classify(exc) == TRANSIENT
    assert is_retryable(exc) and not is_rate_limited(exc)


@pytest.mark.parametrize(
    "exc",
    [
        RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "Run 'x' not found"}),
        RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "Changing param values is not allowed"}),
        InvalidParameterValue("bad key"),
        ValueError("nothing to do with HTTP"),
        KeyError("k"),
    ],
)
def test_permanent_errors(exc):
    assert classify(exc) == PERMANENT
    assert not is_retryable(exc)


def test_chain_is_walked_once_even_with_cycles():
    a, b = ValueError("a"), ValueError("b")
    a.__context__, b.__context__ = b, a
    assert [str(e) for e in exception_chain(a)] == ["a", "b"]


@pytest.mark.parametrize(
    "exc, not_processed",
    [
        (RestException({"error_code": "REQUEST_LIMIT_EXCEEDED", "message": "slow down"}), True),
        (MlflowException("API request to http://h/api/2.0/mlflow/runs/create failed with exception "
                         "HTTPConnectionPool(host='h', port=1): Max retries exceeded with url: x (Caused by "
                         "NewConnectionError('Failed to establish a new connection: [Errno 111] Connection "
                         "refused'))"), True),
        (_raised_from(MlflowException("wrapped"), ConnectionRefusedError(111, "refused")), True),
        (ConnectionResetError("Connection reset by peer"), False),
        (TimeoutError("timed out"), False),
        (MlflowException("API request to endpoint /x failed with error code 503 != 200"), False),
        (RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "bad"}), False),
    ],
)
def test_certainly_not_processed_only_for_refusals(exc, not_processed):
    assert certainly_not_processed(exc) is not_processed


def test_error_summary_is_one_line_without_url_credentials():
    exc = MlflowException("API request to https://user:s3cret@host/api/2.0/x failed\nsecond line")
    assert error_summary(exc) == "API request to https://***@host/api/2.0/x failed"
    assert error_summary(KeyError()) == "KeyError"
    assert len(error_summary(ValueError("x" * 1000), 50)) == 50
