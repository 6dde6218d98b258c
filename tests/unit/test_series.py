"""The panel's hour and day charts (troupe.core.series): counts land in the right point, percentiles come
out of the histograms where they should, restarts are increases, and memory stays at a day of minutes."""

from datetime import UTC, datetime, timedelta
from itertools import count

import pytest

from troupe.core.series import KEEP, Series, ttft_percentile
from troupe.store.records import TurnRecord

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)  # on a 10-minute mark
_ids = count(1)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def turn(
    minutes: float,
    persona: str = "ada",
    *,
    ttft_ms: int | None = 100,
    input_tokens: int = 0,
    output_tokens: int = 0,
    cost_usd: float = 0.0,
    interrupted: bool = False,
    error_code: str | None = None,
) -> TurnRecord:
    """A turn as the store keeps it (the real record, so a renamed field breaks this test)."""
    n = next(_ids)
    return TurnRecord(
        id=n,
        session_id="s1",
        turn_id=f"t{n}",
        persona=persona,
        at=at(minutes),
        ttft_ms=ttft_ms,
        duration_ms=500,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        tool_calls=0,
        cost_usd=cost_usd,
        interrupted=interrupted,
        error_code=error_code,
    )


def point(view: dict, t: str) -> dict:
    (found,) = [p for p in view["points"] if p["t"] == t]
    return found


def test_hour_has_60_minute_points_ending_at_nows_minute():
    view = Series().view("hour", at(30 + 10 / 60))
    assert view["window"] == "hour" and view["step_s"] == 60
    assert len(view["points"]) == 60
    assert view["points"][0]["t"] == view["start"] == "2025-03-01T11:31:00Z"
    assert view["points"][-1]["t"] == "2025-03-01T12:30:00Z"
    assert view["end"] == "2025-03-01T12:31:00Z"


def test_day_has_144_ten_minute_points_on_the_clocks_marks():
    view = Series().view("day", at(34))
    assert view["window"] == "day" and view["step_s"] == 600
    assert len(view["points"]) == 144
    assert view["points"][-1]["t"] == "2025-03-01T12:30:00Z"  # holds now's minute, 12:34
    assert view["start"] == "2025-02-28T12:40:00Z"
    assert view["end"] == "2025-03-01T12:40:00Z"


def test_turns_land_in_their_minute_and_their_ten_minute_point():
    series = Series()
    for minutes in (3, 3 + 59 / 60, 4, 10):  # 12:03:00, 12:03:59, 12:04:00, 12:10:00
        series.add_turn(turn(minutes))
    hour = series.view("hour", at(30))
    assert point(hour, "2025-03-01T12:03:00Z")["turns"] == 2
    assert point(hour, "2025-03-01T12:04:00Z")["turns"] == 1
    assert point(hour, "2025-03-01T12:10:00Z")["turns"] == 1
    assert sum(p["turns"] for p in hour["points"]) == 4
    day = series.view("day", at(30))
    assert point(day, "2025-03-01T12:00:00Z")["turns"] == 3
    assert point(day, "2025-03-01T12:10:00Z")["turns"] == 1


def test_percentiles_interpolate_inside_the_bucket_holding_the_rank():
    series = Series()
    for _ in range(100):
        series.add_turn(turn(1, "ada", ttft_ms=60))  # all in the (50, 75] bucket
    for _ in range(50):
        series.add_turn(turn(1, "bob", ttft_ms=30))  # (25, 50]
        series.add_turn(turn(1, "bob", ttft_ms=120))  # (100, 150]
    minute = point(series.view("hour", at(1)), "2025-03-01T12:01:00Z")
    assert minute["ttft_p50_ms"] == {"ada": 62.5, "bob": 50.0}  # halfway into 50..75; the top of 25..50
    assert minute["ttft_p95_ms"]["bob"] == 145.0  # rank 95 is the 45th of 50 in 100..150


def test_a_bound_belongs_to_the_bucket_it_closes_and_overflow_reports_the_last_bound():
    on_bound = Series()
    for _ in range(10):
        on_bound.add_turn(turn(0, ttft_ms=50))
    assert on_bound.view("hour", at(0))["totals"]["ttft_p50_ms"] == {"ada": 37.5}  # in (25, 50]
    slow = Series()
    for _ in range(10):
        slow.add_turn(turn(0, ttft_ms=20_000))
    assert slow.view("hour", at(0))["totals"]["ttft_p95_ms"] == {"ada": 10000.0}


def test_percentile_of_a_spread_is_within_a_bucket_of_the_truth():
    histogram = [0] * 16
    for ms in range(40, 60):  # 40..59 ms, five of each: true median 49.5, true p95 59
        for _ in range(5):
            histogram[0 if ms <= 25 else 1 if ms <= 50 else 2] += 1
    assert ttft_percentile(histogram, 0.5) == 47.7  # 25 + 25 * 50/55
    assert ttft_percentile(histogram, 0.95) == 72.2  # 50 + 25 * 40/45
    assert ttft_percentile([0] * 16, 0.5) is None


def test_ten_minute_point_merges_the_histograms_of_its_minutes():
    series = Series()
    for _ in range(10):
        series.add_turn(turn(1, ttft_ms=60))
        series.add_turn(turn(5, ttft_ms=120))
    day = point(series.view("day", at(5)), "2025-03-01T12:00:00Z")
    assert day["ttft_p50_ms"] == {"ada": 75.0}  # rank 10: the top of 50..75
    assert day["ttft_p95_ms"] == {"ada": 145.0}  # rank 19: the 9th of 10 in 100..150


def test_turns_without_a_first_token_count_but_stay_out_of_the_percentiles():
    series = Series()
    series.add_turn(turn(0, ttft_ms=None, error_code="model_unavailable"))
    view = series.view("hour", at(0))
    assert view["totals"]["turns"] == 1
    assert view["totals"]["turns_by_persona"] == {"ada": 1}
    assert view["totals"]["ttft_p50_ms"] == {"ada": None}


def test_errors_by_code_and_interruptions():
    series = Series()
    for code in ("model_unavailable", "model_unavailable", "budget_exceeded", None, None):
        series.add_turn(turn(2, error_code=code))
    series.add_turn(turn(2, interrupted=True))
    series.add_turn(turn(12, error_code="model_unavailable"))
    minute = point(series.view("hour", at(12)), "2025-03-01T12:02:00Z")
    assert minute["turns"] == 6
    assert minute["errors"] == {"model_unavailable": 2, "budget_exceeded": 1}
    assert minute["interrupted"] == 1
    assert series.view("day", at(12))["totals"]["errors"] == {"model_unavailable": 3, "budget_exceeded": 1}


def test_tokens_are_input_plus_output_and_cost_is_rounded_per_persona():
    series = Series()
    series.add_turn(turn(0, "ada", input_tokens=300, output_tokens=40, cost_usd=0.0012345678))
    series.add_turn(turn(0, "ada", input_tokens=100, output_tokens=10, cost_usd=0.001))
    series.add_turn(turn(0, "bob", input_tokens=7, output_tokens=3, cost_usd=0.5))
    minute = point(series.view("hour", at(0)), "2025-03-01T12:00:00Z")
    assert minute["tokens"] == {"ada": 450, "bob": 10}
    assert minute["cost_usd"] == {"ada": 0.002235, "bob": 0.5}
    assert minute["turns_by_persona"] == {"ada": 2, "bob": 1}


def test_restarts_are_increases_of_the_total_and_a_smaller_total_counts_zero():
    series = Series()
    series.sample(at(0), sessions=1, pool=2, restarted_total=1)  # counted from 0
    series.sample(at(1), sessions=1, pool=2, restarted_total=1)
    series.sample(at(1.5), sessions=1, pool=2, restarted_total=3)
    series.sample(at(2), sessions=1, pool=2, restarted_total=6)
    series.sample(at(3), sessions=1, pool=2, restarted_total=1)  # the orchestrator restarted: re-based
    series.sample(at(4), sessions=1, pool=2, restarted_total=3)
    hour = series.view("hour", at(4))
    assert [p["restarts"] for p in hour["points"][-5:]] == [1, 2, 3, 0, 2]
    assert point(series.view("day", at(4)), "2025-03-01T12:00:00Z")["restarts"] == 8


def test_gauges_are_the_last_sample_of_the_minute_and_of_the_ten_minutes():
    series = Series()
    series.sample(at(1), sessions=4, pool=2, restarted_total=0)
    series.sample(at(1.5), sessions=5, pool=1, restarted_total=0)
    series.sample(at(7), sessions=3, pool=3, restarted_total=0)
    minute = point(series.view("hour", at(9)), "2025-03-01T12:01:00Z")
    assert (minute["sessions"], minute["pool"]) == (5, 1)
    ten = point(series.view("day", at(9)), "2025-03-01T12:00:00Z")
    assert (ten["sessions"], ten["pool"]) == (3, 3)


def test_empty_minutes_are_zero_points_with_no_gauges_and_given_personas_show():
    series = Series()
    series.add_turn(turn(5, "bob", input_tokens=5, cost_usd=0.1))
    series.sample(at(5), sessions=2, pool=1, restarted_total=0)
    view = series.view("hour", at(10), personas=["ada"])
    assert view["personas"] == ["ada", "bob"]  # given and seen, sorted
    assert point(view, "2025-03-01T12:05:00Z")["tokens"] == {"ada": 0, "bob": 5}
    assert point(view, "2025-03-01T12:06:00Z") == {
        "t": "2025-03-01T12:06:00Z",
        "turns": 0,
        "errors": {},
        "interrupted": 0,
        "turns_by_persona": {"ada": 0, "bob": 0},
        "ttft_p50_ms": {"ada": None, "bob": None},
        "ttft_p95_ms": {"ada": None, "bob": None},
        "tokens": {"ada": 0, "bob": 0},
        "cost_usd": {"ada": 0.0, "bob": 0.0},
        "sessions": None,
        "pool": None,
        "restarts": 0,
    }


def test_totals_equal_the_sum_of_the_points():
    series = Series()
    for minutes in range(0, 300, 7):
        persona = "ada" if minutes % 2 else "bob"
        code = "model_unavailable" if minutes % 3 == 0 else None
        series.add_turn(
            turn(
                minutes,
                persona,
                ttft_ms=40 + minutes,
                input_tokens=minutes,
                output_tokens=3,
                cost_usd=0.01,
                error_code=code,
            )
        )
    view = series.view("day", at(300))
    points, totals = view["points"], view["totals"]
    assert totals["turns"] == sum(p["turns"] for p in points) == 43
    assert totals["errors"] == {"model_unavailable": sum(p["errors"].get("model_unavailable", 0) for p in points)}
    for persona in ("ada", "bob"):
        assert totals["tokens"][persona] == sum(p["tokens"][persona] for p in points)
        assert totals["cost_usd"][persona] == pytest.approx(sum(p["cost_usd"][persona] for p in points))
        assert totals["turns_by_persona"][persona] == sum(p["turns_by_persona"][persona] for p in points)


def test_memory_stays_at_a_day_of_buckets_after_three_days():
    series = Series()
    largest = 0
    for minutes in range(3 * 24 * 60):
        series.add_turn(turn(minutes))
        series.sample(at(minutes), sessions=1, pool=1, restarted_total=minutes)
        largest = max(largest, len(series))
    assert largest == len(series) == KEEP
    # the last day is all there: the newest minute is 11:59, so the day's points cover exactly KEEP minutes
    day = series.view("day", at(3 * 24 * 60 - 1))
    assert day["totals"]["turns"] == KEEP
    assert all(p["restarts"] == 10 for p in day["points"])


def test_turns_older_than_the_window_are_ignored():
    series = Series()
    series.add_turn(turn(KEEP))  # the newest minute
    series.add_turn(turn(0))  # KEEP minutes before it: out of the window
    series.add_turn(turn(1))  # the oldest minute kept
    assert len(series) == 2
    assert series.view("day", at(KEEP))["totals"]["turns"] == 1  # the day view does not reach back to 12:01
    series.add_turn(turn(3 * KEEP))  # far ahead: everything held drops out
    assert len(series) == 1


def test_naive_datetimes_are_refused():
    with pytest.raises(ValueError, match="aware"):
        Series().view("hour", datetime(2025, 3, 1, 12, 0))
