"""Client-side throttling per MLflow API class with token buckets.

Databricks documents its tracking limits per API class (experiment management, search runs,
log batch, everything else). A :class:`RateLimiter` holds one bucket per class, built from a
:class:`~mlflow_spark_tools.config.RateLimitProfile`, and every request this package sends takes
a token from its class first, so a process stays under the configured rate however many threads
it runs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from mlflow_spark_tools.config import API_CLASSES, RateLimitProfile


class TokenBucket:
    """A thread-safe token bucket that paces callers instead of rejecting them.

    A caller that finds the bucket empty reserves the next token (the balance goes negative)
    and sleeps until it is due, so concurrent callers are served in arrival order and the rate
    is never exceeded. With ``capacity=1`` requests are evenly spaced ``1 / rate`` apart: no
    one-second window ever holds more than ``rate + 1`` requests.

    Args:
        rate: tokens per second.
        capacity: the largest burst; 1 means strict pacing.
        clock: monotonic clock in seconds (injectable for tests).
        sleep: the function that waits (injectable for tests).
    """

    def __init__(
        self,
        rate: float,
        capacity: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.rate = float(rate)
        self.capacity = float(capacity)
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = self.capacity
        self._updated = clock()

    def reserve(self) -> float:
        """Take one token and return how long the caller must wait before using it."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
            self._updated = now
            self._tokens -= 1.0
            if self._tokens >= 0:
                return 0.0
            return -self._tokens / self.rate

    def acquire(self) -> float:
        """Take one token, sleeping until it is due; returns the seconds waited."""
        wait = self.reserve()
        if wait > 0:
            self._sleep(wait)
        return wait

    def try_take(self) -> float:
        """Take one token if one is there and return 0.0; otherwise take nothing and return
        the seconds until one will be (what a server puts into ``Retry-After``)."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
            self._updated = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return 0.0
            return (1.0 - self._tokens) / self.rate


class RateLimiter:
    """One :class:`TokenBucket` per API class of a rate-limit profile."""

    def __init__(
        self,
        profile: RateLimitProfile,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.profile = profile
        self.buckets = {
            api_class: TokenBucket(profile.qps(api_class), 1.0, clock, sleep)
            for api_class in API_CLASSES
        }
        self._lock = threading.Lock()
        self.requests = {api_class: 0 for api_class in API_CLASSES}

    def acquire(self, api_class: str) -> float:
        """Wait for a token of ``api_class`` and count the request."""
        bucket = self.buckets[api_class]
        with self._lock:
            self.requests[api_class] += 1
        return bucket.acquire()


_SHARED: dict[tuple, RateLimiter] = {}
_SHARED_LOCK = threading.Lock()


def shared_limiter(profile: RateLimitProfile) -> RateLimiter:
    """The process's one limiter for ``profile``: every client built with the same profile
    takes its tokens from the same buckets, so the process as a whole stays under the limits."""
    key = (profile.name, tuple(sorted(profile.limits.items())), profile.safety_factor)
    with _SHARED_LOCK:
        limiter = _SHARED.get(key)
        if limiter is None:
            limiter = _SHARED[key] = RateLimiter(profile)
        return limiter
