import pickle

import pytest

from troupe.control_panel.limits import RateLimited, RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def refused(limiter: RateLimiter, **request: str | None) -> RateLimited:
    with pytest.raises(RateLimited) as caught:
        limiter.check(**request)
    return caught.value


def test_a_caller_gets_a_burst_then_a_429_with_a_wait() -> None:
    clock = Clock()
    limiter = RateLimiter(3, clock=clock)
    for _ in range(3):
        limiter.check(caller="+1555")
    error = refused(limiter, caller="+1555")
    assert (error.status, error.type, error.code) == (429, "rate_limit_error", "rate_limit_exceeded")
    assert error.retry_after == 20 and "retry in 20 s" in error.message  # one request in 3 a minute
    clock.now = 15
    assert refused(limiter, caller="+1555").retry_after == 5
    limiter.check(caller="+1666")  # other callers are not affected


def test_the_bucket_refills_continuously_up_to_its_burst() -> None:
    clock = Clock()
    limiter = RateLimiter(3, clock=clock)
    for _ in range(3):
        limiter.check("+1555")  # the positional form the door calls today
    clock.now = 20  # a third of a minute refills one request
    limiter.check("+1555")
    refused(limiter, caller="+1555")
    clock.now = 1000  # a long rest refills the burst, no more
    for _ in range(3):
        limiter.check(caller="+1555")
    refused(limiter, caller="+1555")


def test_a_key_limit_binds_across_its_callers() -> None:
    limiter = RateLimiter(5, per_key_minute=8, clock=Clock())
    for n in range(8):
        limiter.check(key="shop", caller=f"caller-{n}")
    assert "API key" in refused(limiter, key="shop", caller="caller-new").message
    limiter.check(key="other", caller="caller-new")


def test_an_address_limit_defaults_to_ten_callers_worth() -> None:
    limiter = RateLimiter(2, clock=Clock())
    for n in range(20):
        limiter.check(address="10.0.0.1", caller=f"caller-{n}")
    assert "address" in refused(limiter, address="10.0.0.1", caller="caller-new").message
    limiter.check(address="10.0.0.2", caller="caller-new")


def test_an_ipv6_client_is_limited_by_its_64() -> None:
    limiter = RateLimiter(1, per_address_minute=2, clock=Clock())
    limiter.check(address="2001:db8::1")
    limiter.check(address="2001:db8::ffff:2")
    refused(limiter, address="2001:db8::3")
    limiter.check(address="2001:db8:0:1::1")
    limiter.check(address="::ffff:10.0.0.1")  # an IPv4 client seen through IPv6 is its IPv4 address
    limiter.check(address="10.0.0.1")
    refused(limiter, address="10.0.0.1")


def test_anonymous_callers_share_their_key_and_address_buckets() -> None:
    limiter = RateLimiter(2, per_key_minute=100, per_address_minute=5, clock=Clock())
    for n in range(5):
        limiter.check(key="shop", address="10.0.0.1", caller=f"anon-{n}")
    for n in range(100):  # a fresh anonymous id per request escapes nothing
        refused(limiter, key="shop", address="10.0.0.1", caller=f"anon-more-{n}")
    assert set(limiter.buckets) == {("key", "shop"), ("address", "10.0.0.1")}


def test_a_refused_request_takes_nothing_from_its_other_buckets() -> None:
    limiter = RateLimiter(1, per_address_minute=10, clock=Clock())
    limiter.check(address="10.0.0.1", caller="hammer")
    for _ in range(50):
        assert "caller" in refused(limiter, address="10.0.0.1", caller="hammer").message
    for n in range(9):  # the address still has the 9 the hammering caller did not get
        limiter.check(address="10.0.0.1", caller=f"neighbour-{n}")
    refused(limiter, address="10.0.0.1", caller="neighbour-last")


def test_a_refusal_by_the_key_leaves_the_callers_bucket_alone() -> None:
    limiter = RateLimiter(3, per_key_minute=1, clock=Clock())
    limiter.check(key="small", caller="c")
    refused(limiter, key="small", caller="c")
    refused(limiter, key="small", caller="c")
    limiter.check(key="second", caller="c")
    limiter.check(key="third", caller="c")  # the caller's bucket lost only the request it took
    assert "caller" in refused(limiter, key="fourth", caller="c").message


def test_the_wait_is_for_the_emptiest_bucket() -> None:
    clock = Clock()
    limiter = RateLimiter(6, per_key_minute=1, clock=clock)
    for _ in range(6):
        limiter.check(caller="c")
    limiter.check(key="k")
    error = refused(limiter, key="k", caller="c")
    assert error.retry_after == 60 and "API key" in error.message  # the caller's would take 10 s


def test_idle_buckets_expire() -> None:
    clock = Clock()
    limiter = RateLimiter(2, max_entries=3, clock=clock)
    for n in range(3):
        limiter.check(caller=f"caller-{n}")
    clock.now = 60  # full again, they carry nothing
    limiter.check(caller="caller-new")
    assert list(limiter.buckets) == [("caller", "caller-new")]


def test_a_full_table_never_resets_an_active_bucket() -> None:
    clock = Clock()
    limiter = RateLimiter(2, max_entries=10, clock=clock)
    limiter.check(caller="hammer")
    limiter.check(caller="hammer")
    for n in range(1000):  # an attacker floods new ids while the hammering client keeps trying
        limiter.check(caller=f"flood-{n}")
        if n % 5 == 0:
            refused(limiter, caller="hammer")
    assert len(limiter.buckets) == 10 and ("caller", "hammer") in limiter.buckets
    refused(limiter, caller="hammer")
    clock.now = 30  # half a minute gives back one request, not the burst
    limiter.check(caller="hammer")
    refused(limiter, caller="hammer")


def test_a_limit_of_zero_turns_its_scope_off() -> None:
    limiter = RateLimiter(0)
    for _ in range(1000):
        limiter.check(key="k", address="10.0.0.1", caller="x")
    assert not limiter.buckets
    only_keys = RateLimiter(0, per_key_minute=2, clock=Clock())
    only_keys.check(key="k", caller="x")
    only_keys.check(key="k", caller="y")
    refused(only_keys, key="k", caller="z")


def test_a_refusal_keeps_its_wait_across_pickling() -> None:
    error = pickle.loads(pickle.dumps(RateLimited("slow down", retry_after=7)))
    assert isinstance(error, RateLimited) and (error.message, error.retry_after) == ("slow down", 7)
