"""One classifier for the errors the tracking server's clients raise.

A rate limit reaches Python code in many forms, depending on the MLflow version and on the path
a request took:

- MLflow 3 over plain HTTP, after its own retries: ``MlflowException`` with ``error_code``
  ``INTERNAL_ERROR`` and the text ``too many 429 error responses`` (urllib3's ``ResponseError``);
- MLflow 2: ``... failed with error code 429 != 200 ...``;
- a ``RestException`` built from Databricks' error body: ``REQUEST_LIMIT_EXCEEDED`` or
  ``RESOURCE_EXHAUSTED``;
- MLflow 3 on Databricks through databricks-sdk: the SDK's ``TooManyRequests``
  (``RequestLimitExceeded``, ``ResourceExhausted``), possibly wrapped in a builtin
  ``TimeoutError`` after a long rate limit;
- the body text ``RPC token bucket limit has been exceeded``.

:func:`classify` walks the whole exception chain (``__cause__`` and ``__context__``) and says
whether an error is a rate limit, transient (5xx, connection reset, timeout) or permanent (a
4xx such as ``RESOURCE_DOES_NOT_EXIST`` or ``INVALID_PARAMETER_VALUE``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TypeVar

from mlflow_spark_tools.core.redaction import redact, redact_uri

RATE_LIMITED, TRANSIENT, PERMANENT = "rate_limited", "transient", "permanent"

RATE_LIMIT_CODES = frozenset({"REQUEST_LIMIT_EXCEEDED", "RESOURCE_EXHAUSTED", "TOO_MANY_REQUESTS"})
TRANSIENT_CODES = frozenset(
    {"TEMPORARILY_UNAVAILABLE", "SERVICE_UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED", "UNAVAILABLE"}
)
_RATE_LIMIT_TEXT = re.compile(
    r"too many 429 error responses|error code 429 != 200|rpc token bucket limit has been exceeded"
    r"|request_limit_exceeded|resource_exhausted|429 client error|too many requests",
    re.IGNORECASE,
)
_TRANSIENT_TEXT = re.compile(
    r"error code 5\d\d != 200|too many 5\d\d error responses|connection (reset|refused|aborted)"
    r"|max retries exceeded|timed out|read timeout|remote end closed connection|broken pipe"
    r"|temporarily unavailable|service unavailable|bad gateway|gateway time-?out",
    re.IGNORECASE,
)
_NOT_SENT_TEXT = re.compile(
    r"failed to establish a new connection|connection refused|name or service not known"
    r"|nodename nor servname|temporary failure in name resolution",
    re.IGNORECASE,
)
_TRANSIENT_TYPES = (ConnectionError, TimeoutError)
_TRANSIENT_TYPE_NAMES = frozenset(
    {
        "ConnectionError", "ConnectTimeout", "ReadTimeout", "Timeout", "ProtocolError",
        "NewConnectionError", "RemoteDisconnected", "ChunkedEncodingError",
        "InternalError", "TemporarilyUnavailable", "DeadlineExceeded", "BadGateway",
        "ServiceUnavailable", "GatewayTimeout",
    }
)
_MAX_CHAIN = 32


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception it was raised from or while handling, each once."""
    seen: set[int] = set()
    stack = [exc]
    while stack and len(seen) < _MAX_CHAIN:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        stack.extend(e for e in (current.__context__, current.__cause__) if e is not None)


def _error_code(exc: BaseException) -> str | None:
    code = getattr(exc, "error_code", None)
    return str(code) if code else None


def _status(exc: BaseException) -> int | None:
    for attr in ("status_code", "http_status_code"):
        value = getattr(exc, attr, None)
        if isinstance(value, int):
            return value
    response = getattr(exc, "response", None)
    value = getattr(response, "status_code", None)
    return value if isinstance(value, int) else None


def _is_rate_limit(exc: BaseException) -> bool:
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & {"TooManyRequests", "RequestLimitExceeded", "ResourceExhausted"}:
        return True
    if _error_code(exc) in RATE_LIMIT_CODES or _status(exc) == 429:
        return True
    return bool(_RATE_LIMIT_TEXT.search(str(exc)))


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, _TRANSIENT_TYPES):
        return True
    if {cls.__name__ for cls in type(exc).__mro__} & _TRANSIENT_TYPE_NAMES:
        return True
    if _error_code(exc) in TRANSIENT_CODES:
        return True
    status = _status(exc)
    if status is not None and (status >= 500 or status == 408):
        return True
    return bool(_TRANSIENT_TEXT.search(str(exc)))


def classify(exc: BaseException) -> str:
    """:data:`RATE_LIMITED`, :data:`TRANSIENT` or :data:`PERMANENT` for an exception chain.

    A rate limit anywhere in the chain wins: MLflow wraps a 429 in errors whose own type and
    code (``INTERNAL_ERROR``) look like a server failure.
    """
    chain = list(exception_chain(exc))
    if any(_is_rate_limit(e) for e in chain):
        return RATE_LIMITED
    if any(_is_transient(e) for e in chain):
        return TRANSIENT
    return PERMANENT


def is_rate_limited(exc: BaseException) -> bool:
    """Whether the tracking server refused the request for its rate limit."""
    return classify(exc) == RATE_LIMITED


def is_retryable(exc: BaseException) -> bool:
    """Rate limits, 5xx, connection resets and timeouts: worth another attempt later."""
    return classify(exc) != PERMANENT


def certainly_not_processed(exc: BaseException) -> bool:
    """Whether the server certainly did not act on the request: it refused it for its rate
    limit, or no connection was ever made. Only then is an operation that is not safe to
    repeat (creating a run, appending metric points) retried."""
    chain = list(exception_chain(exc))
    if any(_is_rate_limit(e) for e in chain):
        return True
    if any(type(e).__name__ == "RestException" or _status(e) is not None for e in chain):
        return False  # the server answered: whatever its text says, the request reached it
    return any(isinstance(e, ConnectionRefusedError) or type(e).__name__ == "NewConnectionError"
               or bool(_NOT_SENT_TEXT.search(str(e))) for e in chain)


def is_unreachable(exc: BaseException) -> bool:
    """Whether no connection could be made at all (refused, or the host name does not
    resolve): a server that is down or a wrong URI, rarely worth a long wait."""
    return any(isinstance(e, ConnectionRefusedError) or type(e).__name__ == "NewConnectionError"
               or bool(_NOT_SENT_TEXT.search(str(e))) for e in exception_chain(exc))


def error_summary(exc: BaseException, limit: int = 300) -> str:
    """The first line of an error (its type if it has no text), without the credentials a URL
    in it may carry: what logs, reasons and one-line messages show."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return redact(text)[:limit]


_REMOTE_TYPE_NAMES = frozenset({"MlflowException", "RestException", "RequestException", "HTTPError",
                                "HTTPException", "DatabricksError", "ClientError", "BotoCoreError",
                                "AzureError", "GoogleAPICallError"})


def is_remote_error(exc: BaseException) -> bool:
    """Whether an error came from talking to a server (the tracking server, an artifact store):
    an MLflow, HTTP-library or cloud-SDK error, or a connection error or timeout anywhere in
    the chain. Everything else is a local error (a bug, a full disk, an unreadable file) and
    must not be reported as the server's refusal."""
    for e in exception_chain(exc):
        if isinstance(e, _TRANSIENT_TYPES):
            return True
        if {cls.__name__ for cls in type(e).__mro__} & (_REMOTE_TYPE_NAMES | _TRANSIENT_TYPE_NAMES):
            return True
    return False


def is_not_found(exc: BaseException) -> bool:
    """Whether the server said the run, experiment or artifact does not exist."""
    return getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST"


def names_nothing(exc: BaseException) -> bool:
    """Whether the server said an id names nothing: no such thing, or not a valid id at all."""
    return is_not_found(exc) or getattr(exc, "error_code", None) in ("INVALID_PARAMETER_VALUE", "BAD_REQUEST")


NotFound = TypeVar("NotFound", bound=Exception)


def not_found(kind: type[NotFound], what: str, tracking_uri: str | None) -> NotFound:
    """Our error for what the tracking server does not have: ``<what> does not exist on
    <server>`` (credentials in the server's URI masked)."""
    return kind(f"{what} does not exist on {redact_uri(tracking_uri)}.")


def endpoint_missing(exc: BaseException) -> bool:
    """Whether the server answered that it has no such endpoint (an older server): a 404 or
    405 without an MLflow error of its own (``RESOURCE_DOES_NOT_EXIST`` names a missing
    experiment or run, not a missing API)."""
    code = getattr(exc, "error_code", None)
    if code == "ENDPOINT_NOT_FOUND":
        return True
    if code not in (None, "", "INTERNAL_ERROR"):  # MLflow wraps a non-JSON answer as INTERNAL_ERROR
        return False
    status = getattr(exc, "status_code", None) or getattr(getattr(exc, "response", None), "status_code", None)
    text = str(exc)
    return status in (404, 405) or "error code 404" in text or "error code 405" in text
