from mlflow_spark_tools.config import RateLimitProfile
from mlflow_spark_tools.ratelimit import RateLimiter, TokenBucket


class FakeTime:
    def __init__(self):
        self.now = 0.0
        self.sleeps = []

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


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
