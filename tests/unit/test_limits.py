import pytest

from troupe.control_panel.limits import RateLimited, RateLimiter


def test_bucket_allows_a_burst_then_refills():
    now = [0.0]
    limiter = RateLimiter(3, clock=lambda: now[0])
    for _ in range(3):
        limiter.check("+1555")
    with pytest.raises(RateLimited) as caught:
        limiter.check("+1555")
    assert caught.value.status == 429
    limiter.check("+1666")  # other callers are not affected
    now[0] += 20  # a third of a minute refills one request
    limiter.check("+1555")


def test_zero_disables():
    limiter = RateLimiter(0)
    for _ in range(1000):
        limiter.check("x")
