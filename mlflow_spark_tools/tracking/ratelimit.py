"""Client-side throttling per MLflow API class with token buckets.

Databricks documents its tracking limits per API class (experiment management, search runs,
log batch, everything else). A :class:`RateLimiter` holds one bucket per class, built from a
:class:`~mlflow_spark_tools.config.RateLimitProfile`, and every request this package sends takes
a token from its class first, so a process stays under the configured rate however many threads
it runs.
"""

from __future__ import annotations

import math
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
        self._epoch = 0  # bumped by throttle(): reservations made before it are void

    def reserve(self) -> float:
        """Take one token and return how long the caller must wait before using it."""
        return self._reserve()[0]

    def _reserve(self) -> tuple[float, int]:
        """:meth:`reserve`, and the epoch the reservation was made in."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
            self._updated = now
            self._tokens -= 1.0
            if self._tokens >= 0:
                return 0.0, self._epoch
            return -self._tokens / self.rate, self._epoch

    def acquire(self) -> float:
        """Take one token, sleeping until it is due; returns the seconds waited.

        A caller whose reservation :meth:`throttle` cancelled while it slept reserves again,
        at the new rate and behind the hold, instead of going out at the old pace."""
        waited = 0.0
        while True:
            wait, epoch = self._reserve()
            if wait <= 0:
                return waited
            self._sleep(wait)
            waited += wait
            with self._lock:
                if self._epoch == epoch:
                    return waited

    def set_rate(self, rate: float) -> None:
        """Change the rate from now on (tokens gathered so far are kept)."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
            self._updated = now
            self.rate = float(rate)

    def throttle(self, rate: float, hold_seconds: float = 0.0) -> None:
        """The server refused a request: go on at ``rate`` after ``hold_seconds``, and cancel the
        reservations callers are sleeping on (they were made at the old rate; each caller
        reserves again when it wakes). Without this, callers queued before the 429 keep
        going out at the old pace for as long as their queue lasts and draw more 429s."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
            self._updated = now
            # a bucket with sleepers holds no spare token; forget what they reserved
            self._tokens = min(max(self._tokens, 0.0), 1.0 - hold_seconds * rate)
            self.rate = float(rate)
            self._epoch += 1

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


REPEAT_EVENT_SECONDS = 10.0


class AdaptiveRate:
    """The rate one API class may use now: the profile's limit until the server says otherwise.

    A workspace's budget is shared with every other client on it, so the profile's limit is
    only an upper bound. A 429 means the share left to us is smaller: the rate drops to
    ``decrease`` times what it was (multiplicative decrease; one 429 per congestion event
    counts, more within ``max(1 s, Retry-After)`` of a decrease are the same event; an event
    within 10 s of the last one steps down by ``decrease`` squared), and climbs
    back by ``probe_share`` of the limit per second while requests go through (additive
    increase), up to the limit. The slow climb is what keeps 429s rare while other clients'
    use is steady (about one per climb from ``decrease`` x capacity back to capacity), at an
    average of about (1 + decrease) / 2 of the capacity left to us; and it gives capacity
    back to the others, and takes it again, as their use changes.

    Args:
        limit: the profile's rate (with its safety factor), requests per second.
        floor_share: the rate never drops below this share of ``limit``.
        clock: monotonic clock (injectable for tests).
    """

    def __init__(self, limit: float, floor_share: float = 0.1, decrease: float = 0.75,
                 probe_share: float = 0.003, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = float(limit)
        self.floor = self.limit * floor_share
        self.decrease = decrease
        self.probe = self.limit * probe_share
        self.rate = self.limit
        self._clock = clock
        self._lock = threading.Lock()
        self._updated = clock()
        self._quiet_until = 0.0
        self._last_event = -math.inf

    def on_throttled(self, retry_after: float | None = None) -> float:
        """A 429 came back; returns the new rate."""
        with self._lock:
            now = self._clock()
            if now < self._quiet_until:
                return self.rate
            # Another event soon after the last one: the rate is still far above what is left
            # (at the start, when other clients hold part of the budget): step down faster.
            factor = self.decrease ** 2 if now - self._last_event < REPEAT_EVENT_SECONDS else self.decrease
            self.rate = max(self.floor, self.rate * factor)
            self._last_event = now
            self._quiet_until = now + max(1.0, retry_after or 0.0)
            self._updated = now
            return self.rate

    def on_success(self) -> float:
        """A request went through; returns the (possibly raised) rate."""
        with self._lock:
            now = self._clock()
            elapsed = max(0.0, now - self._updated)
            self._updated = now
            if self.rate < self.limit:
                self.rate = min(self.limit, self.rate + self.probe * elapsed)
            return self.rate


class RateLimiter:
    """One :class:`TokenBucket` per API class of a rate-limit profile, each at the rate its
    :class:`AdaptiveRate` allows now (the profile's limit until a 429 says less)."""

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
        self.adaptive = {api_class: AdaptiveRate(profile.qps(api_class), clock=clock) for api_class in API_CLASSES}
        self._lock = threading.Lock()
        self.requests = {api_class: 0 for api_class in API_CLASSES}

    def acquire(self, api_class: str) -> float:
        """Wait for a token of ``api_class`` and count the request."""
        bucket = self.buckets[api_class]
        with self._lock:
            self.requests[api_class] += 1
        return bucket.acquire()

    def on_success(self, api_class: str) -> None:
        """Feedback: a request of ``api_class`` was answered without a 429."""
        adaptive = self.adaptive[api_class]
        if adaptive.rate < adaptive.limit:
            self.buckets[api_class].set_rate(adaptive.on_success())

    def on_throttled(self, api_class: str, retry_after: float | None = None) -> None:
        """Feedback: a 429; the class slows down and waits out ``Retry-After``."""
        self.buckets[api_class].throttle(self.adaptive[api_class].on_throttled(retry_after), retry_after or 0.0)

    def rates(self) -> dict[str, float]:
        """The rate each class may use now (requests per second)."""
        return {api_class: round(a.rate, 3) for api_class, a in self.adaptive.items()}


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
