from mlflow_spark_tools.config import RateLimitProfile
from mlflow_spark_tools.tracking.ratelimit import RateLimiter, TokenBucket
from tests.support.fake_time import FakeTime


def test_bucket_paces_requests_evenly_at_the_rate():
    t = FakeTime()
    bucket = TokenBucket(5.0, 1.0, t.clock, t.sleep)
    times = []
    for _ in range(11):
        bucket.acquire()
        times.append(t.now)
    assert times[0] == 0.0
    gaps = [round(b - a, 9) for a, b in zip(times, times[1:])]
    assert gaps == [0.2] * 10
    # no window of one second holds more than rate + 1 requests
    assert max(sum(1 for x in times if s <= x < s + 1.0) for s in times) <= 6


def test_reservations_queue_concurrent_callers():
    t = FakeTime()
    bucket = TokenBucket(2.0, 1.0, t.clock, t.sleep)
    waits = [bucket.reserve() for _ in range(4)]  # four callers arrive at the same instant
    assert waits == [0.0, 0.5, 1.0, 1.5]


def test_capacity_allows_a_burst_then_paces():
    t = FakeTime()
    bucket = TokenBucket(10.0, 3.0, t.clock, t.sleep)
    assert [bucket.reserve() for _ in range(4)] == [0.0, 0.0, 0.0, 0.1]


def test_limiter_uses_profile_rates_with_safety_factor():
    profile = RateLimitProfile.load("databricks")
    limiter = RateLimiter(profile)
    assert profile.safety_factor == 0.95
    assert abs(limiter.buckets["search_runs"].rate - 6.65) < 1e-9
    assert abs(limiter.buckets["log_batch"].rate - 44.65) < 1e-9
    assert abs(limiter.buckets["other"].rate - 120.65) < 1e-9
    assert abs(limiter.buckets["experiment_management"].rate - 6.65) < 1e-9


def test_one_congestion_event_lowers_the_rate_once_and_the_rate_climbs_back_slowly():
    from mlflow_spark_tools.tracking.ratelimit import AdaptiveRate

    t = FakeTime()
    rate = AdaptiveRate(10.0, clock=t.clock)
    assert rate.on_throttled(1.0) == 7.5
    t.now += 0.5
    assert rate.on_throttled(1.0) == 7.5  # the same congestion event
    t.now += 1.0
    assert abs(rate.on_throttled(1.0) - 7.5 * 0.75**2) < 1e-9  # a new event soon after: a bigger step
    for _ in range(100):  # successes every 0.1 s for 10 s: +0.03 per second
        t.now += 0.1
        rate.on_success()
    assert abs(rate.rate - (7.5 * 0.75**2 + 0.3)) < 1e-6
    t.now += 20
    before = rate.rate
    assert abs(rate.on_throttled() - before * 0.75) < 1e-9  # long after the last event: the usual step
    t.now += 1000
    assert rate.on_success() == 10.0  # never over the limit
    floor = AdaptiveRate(10.0, clock=t.clock)
    for _ in range(50):
        t.now += 2.0
        floor.on_throttled()
    assert floor.rate == 1.0  # never below 10% of the limit


def test_the_limiter_waits_out_retry_after_and_slows_the_class():
    t = FakeTime()
    limiter = RateLimiter(RateLimitProfile("p", {"experiment_management": 10, "search_runs": 10,
                                                 "log_batch": 10, "other": 10}, 1.0), t.clock, t.sleep)
    limiter.acquire("other")
    limiter.on_throttled("other", retry_after=2.0)
    start = t.now
    limiter.acquire("other")
    assert t.now - start >= 2.0
    assert limiter.rates()["other"] == 7.5 and limiter.rates()["log_batch"] == 10.0
    assert limiter.buckets["other"].rate == 7.5


def test_a_429_cancels_the_reservations_made_at_the_old_rate():
    # Callers queued before a 429 must not go out at the old pace after it: the one that slept
    # on a reservation reserves again behind the Retry-After, at the lowered rate.
    t = FakeTime()
    bucket = TokenBucket(10.0, 1.0, t.clock, None)
    throttled = []

    def sleep(seconds: float) -> None:
        if not throttled:  # the 429 arrives while this caller sleeps
            throttled.append(t.now)
            bucket.throttle(1.0, hold_seconds=2.0)
        t.sleep(seconds)

    bucket._sleep = sleep
    assert bucket.acquire() == 0.0
    for _ in range(5):  # five other callers queued at 10/s, up to 0.5 s ahead
        bucket.reserve()
    waited = bucket.acquire()
    assert throttled == [0.0]
    assert abs(waited - 2.0) < 1e-9  # behind the hold, not at 0.6 s
    assert abs(bucket.acquire() - 1.0) < 1e-9  # the next one a second later: the new rate
