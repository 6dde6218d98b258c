from datetime import UTC, datetime, timedelta

from troupe.core.schedule import default_schedule, describe, due, latest_slot, next_slot, validate


def test_validate_names_the_problem():
    assert validate("0 9 * * *") is None
    assert validate("@once 2026-12-01T09:00") is None
    assert "5 fields" in validate("0 9 * *")
    assert "not a valid" in validate("61 9 * * *")
    assert "ISO time" in validate("@once tomorrow")


def test_slots_are_in_the_personas_time_zone():
    now = datetime(2026, 11, 24, 18, 30, tzinfo=UTC)  # 10:30 in Los Angeles
    assert latest_slot("0 9 * * *", "America/Los_Angeles", now) == datetime(2026, 11, 24, 17, 0, tzinfo=UTC)
    assert next_slot("0 9 * * *", "America/Los_Angeles", now) == datetime(2026, 11, 25, 17, 0, tzinfo=UTC)


def test_due_runs_a_slot_once_within_grace():
    now = datetime(2026, 11, 24, 9, 5, tzinfo=UTC)
    grace = timedelta(minutes=15)
    first = due("0 9 * * *", "UTC", last_slot=None, now=now, grace=grace)
    assert first.run == datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
    assert due("0 9 * * *", "UTC", last_slot=first.run, now=now, grace=grace).run is None


def test_missed_slot_beyond_grace_is_skipped_not_run():
    now = datetime(2026, 11, 24, 11, 0, tzinfo=UTC)
    result = due("0 9 * * *", "UTC", last_slot=None, now=now, grace=timedelta(minutes=15))
    assert result.run is None
    assert result.skipped == (datetime(2026, 11, 24, 9, 0, tzinfo=UTC),)


def test_once_runs_only_after_its_time():
    expr = "@once 2026-11-24T12:00:00+00:00"
    assert latest_slot(expr, "UTC", datetime(2026, 11, 24, 11, tzinfo=UTC)) is None
    assert latest_slot(expr, "UTC", datetime(2026, 11, 24, 13, tzinfo=UTC)) is not None


def test_default_posts_are_staggered():
    posts = {default_schedule(i)["post"] for i in range(5)}
    assert len(posts) == 5
    assert all(validate(default_schedule(i)["post"]) is None for i in range(5))


def test_schedules_in_words_cover_ranges_steps_and_named_days():
    working_hours = "Every 15 minutes, between 09:00 and 17:59, Monday through Friday (UTC)"
    assert describe("*/15 9-17 * * 1-5", "UTC") == working_hours
    assert describe("0 22 * * 1-5", "UTC") == "At 22:00, Monday through Friday (UTC)"
    assert describe("5 4 * * sun", "Asia/Tokyo") == "At 04:05, only on Sunday (Asia/Tokyo)"
    assert describe("0 9 * * 7", "UTC") == describe("0 9 * * 0", "UTC") == "At 09:00, only on Sunday (UTC)"
    assert describe("0 0 1 1 *", "UTC") == "At 00:00, on day 1 of the month, only in January (UTC)"
    assert describe("0 8 * * MON#1", "UTC") == "At 08:00, on the first Monday of the month (UTC)"
    assert describe(default_schedule(0)["post"], "UTC") == "At 11:00 and 16:00 (UTC)"


def test_a_schedule_without_a_reading_is_shown_as_written():
    assert describe("61 9 * * *", "UTC") == "Cron '61 9 * * *' (UTC)"  # not 'At 09:61'
    assert describe("0 9 * *", "UTC") == "Cron '0 9 * *' (UTC)"
    assert describe("@once 2026-12-01T09:00", "Europe/Paris") == "Once, at 2026-12-01T09:00 (Europe/Paris)"
