"""The one retry layer: every tracking operation of this package is retried by a
:class:`RetryPolicy` through :func:`call_with_retries`.

The named policies are the distinct behaviours the package needs:

- :func:`patient` — the retrying client's operations, from ``client.retries`` in the
  configuration: a fixed number of attempts, exponential waits with jitter, no time bound;
- :func:`fail_fast` — requests sent from Spark tasks (the collector): give up within seconds so
  the run is deferred instead of the task stalling; in a storm, do not retry a 429 at all;
- :func:`back_pressure` — the replay: honour ``Retry-After`` and keep waiting out 429s for as
  long as the workspace asks (the replay has nowhere else to go), other errors within a bound.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import tenacity

from mlflow_spark_tools.config import RetrySettings
from mlflow_spark_tools.tracking.pacing import StopSending, retry_after_of
from mlflow_spark_tools.tracking.rate_limit_errors import (
    classify,
    error_summary,
    exception_chain,
    is_rate_limited,
    is_retryable,
    is_unreachable,
)

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry one operation.

    Attributes:
        attempts: tries in total (1 = no retry).
        initial_wait: seconds before the second try; doubles each time.
        max_wait: the longest single wait.
        jitter: up to this many random seconds added to a wait, so that many workers refused
            at once do not come back at once.
        deadline: give up once this many seconds have passed since the first try (the last
            wait is cut to end there); None: no time bound.
        honour_retry_after: wait at least what the server's ``Retry-After`` asks.
        retry_transient: retry 5xx answers, connection resets and timeouts.
        retry_rate_limits: retry 429s (else a 429 raises at once).
        rate_limit_deadline: retry 429s for this many seconds however many attempts that takes
            (back-pressure: wait and go on); None treats them like other errors.
        unreachable_deadline: stop retrying a server that refuses connections (or whose name
            does not resolve) this many seconds after the first try; None: like other errors.
    """

    attempts: int = 3
    initial_wait: float = 0.25
    max_wait: float = 2.0
    jitter: float = 0.0
    deadline: float | None = None
    honour_retry_after: bool = False
    retry_transient: bool = True
    retry_rate_limits: bool = True
    rate_limit_deadline: float | None = None
    unreachable_deadline: float | None = None


#: How long the retrying client tries a server that refuses connections: long enough for a
#: restart's blip, short enough that a wrong URI or a stopped server fails in seconds.
UNREACHABLE_SECONDS = 5.0


def patient(settings: RetrySettings) -> RetryPolicy:
    """The retrying client's policy for one operation (``client.retries.<operation>``); a
    server that refuses connections is given up after :data:`UNREACHABLE_SECONDS`."""
    if settings.attempts is None or settings.initial_wait is None or settings.max_wait is None \
            or settings.jitter is None:
        raise ValueError("patient() needs complete retry settings (ClientConfig.policy fills them in)")
    return RetryPolicy(attempts=settings.attempts, initial_wait=settings.initial_wait,
                       max_wait=settings.max_wait, jitter=settings.jitter,
                       unreachable_deadline=UNREACHABLE_SECONDS)


def fail_fast(seconds: float, *, in_storm: bool = False) -> RetryPolicy:
    """Requests from Spark tasks: a few quick tries within ``seconds``; in a storm (a run of
    this process was deferred on a rate limit lately) a 429 raises at once."""
    return RetryPolicy(attempts=4, initial_wait=0.25, max_wait=1.0, deadline=seconds,
                       retry_transient=True, retry_rate_limits=not in_storm)


def back_pressure(rate_limit_seconds: float = 1800.0) -> RetryPolicy:
    """The replay: 429s waited out (``Retry-After`` honoured) for up to ``rate_limit_seconds``;
    other transient errors retried for two minutes."""
    return RetryPolicy(attempts=8, initial_wait=0.5, max_wait=30.0, deadline=120.0,
                       honour_retry_after=True, rate_limit_deadline=rate_limit_seconds)


def call_with_retries(
    policy: RetryPolicy,
    what: str,
    func: Callable[[], T],
    *,
    repeatable: Callable[[Exception], bool] = is_retryable,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    log_level: int = logging.INFO,
) -> T:
    """``func()``, retried by ``policy``; the last error is raised when it gives up.

    Args:
        policy: how often and how long.
        what: the operation, for the log line of each retry.
        func: the work; every try calls it again.
        repeatable: whether an error other than a 429 may be retried (an operation that is
            not safe to repeat passes ``certainly_not_processed``).
        sleep: the wait (injectable for tests).
        clock: the monotonic clock the deadlines are measured on (injectable for tests).
        log_level: the level of the line logged before each retry.
    """
    started = clock()

    def elapsed() -> float:
        return clock() - started

    def retryable(exc: BaseException) -> bool:
        if not isinstance(exc, Exception) or any(isinstance(e, StopSending) for e in exception_chain(exc)):
            return False
        if is_rate_limited(exc):
            bound = policy.rate_limit_deadline if policy.rate_limit_deadline is not None else policy.deadline
            return policy.retry_rate_limits and (bound is None or elapsed() < bound)
        if policy.deadline is not None and elapsed() >= policy.deadline:
            return False
        if policy.unreachable_deadline is not None and elapsed() >= policy.unreachable_deadline \
                and is_unreachable(exc):
            return False
        return policy.retry_transient and repeatable(exc)

    def unbounded_rate_limit(state: tenacity.RetryCallState) -> bool:
        exc = state.outcome.exception() if state.outcome else None
        return policy.rate_limit_deadline is not None and exc is not None and is_rate_limited(exc)

    def stop(state: tenacity.RetryCallState) -> bool:
        return state.attempt_number >= policy.attempts and not unbounded_rate_limit(state)

    def wait(state: tenacity.RetryCallState) -> float:
        seconds = min(policy.max_wait, policy.initial_wait * 2 ** (state.attempt_number - 1)
                      + random.uniform(0, policy.jitter))
        exc = state.outcome.exception() if state.outcome else None
        retry_after = retry_after_of(exc) if exc is not None else None
        if policy.honour_retry_after and retry_after is not None:
            return max(seconds, retry_after)
        if policy.unreachable_deadline is not None and exc is not None and is_unreachable(exc):
            seconds = max(0.0, min(seconds, policy.unreachable_deadline - elapsed()))
        if policy.deadline is not None:
            # the last try comes at the deadline, not a whole backoff after it
            return max(0.0, min(seconds, policy.deadline - elapsed()))
        return seconds

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        seconds = state.next_action.sleep if state.next_action else 0.0
        of = "" if unbounded_rate_limit(state) else f" of {policy.attempts - 1}"
        log.log(log_level, "%s failed (%s: %s); retry %d%s in %.1f s", what,
                classify(exc) if exc else "?", error_summary(exc) if exc else "", state.attempt_number, of,
                seconds)

    retrying = tenacity.Retrying(stop=stop, wait=wait, retry=tenacity.retry_if_exception(retryable),
                                 sleep=sleep, before_sleep=before_sleep, reraise=True)
    return retrying(func)
