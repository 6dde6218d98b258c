"""Goals files: the shipped ones load, flags are computed for a fixed day, bad files are named precisely."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest

from troupe.core.errors import ConfigError
from troupe.life.goals import (
    REVIEW_INSTRUCTION,
    Flag,
    Goals,
    GoalsFileError,
    KeyResult,
    Objective,
    Project,
    at_risk,
    brief,
    goals_path,
    load_goals,
    to_dict,
)

EXECUTIVES = ("alex", "tony", "maya", "jordan", "riley")
TODAY = date(2026, 11, 25)

GOOD = """\
mission: Keep the lights on.
quarter: 2026-Q4
objectives:
  - title: Be reliable
    key_results:
      - description: Quiet weeks
        target: 8
        current: {current}
        unit: weeks
projects:
  - name: Migration
    status: active
    priority: {priority}
    due: {due}
"""


def write(tmp_path: Path, text: str, name: str = "zoe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def good(tmp_path: Path, current: str = "3", priority: str = "p0", due: str = "2026-11-30") -> Path:
    return write(tmp_path, GOOD.format(current=current, priority=priority, due=due))


def problem(path: Path) -> str:
    with pytest.raises(GoalsFileError) as caught:
        load_goals(path)
    assert isinstance(caught.value, ConfigError)
    assert str(path) in caught.value.message
    return caught.value.message


@pytest.mark.parametrize("key", EXECUTIVES)
def test_every_shipped_goals_file_loads_and_flags_something(key: str):
    goals = load_goals(goals_path(None, key))
    assert goals.quarter == "2026-Q4"
    assert goals.mission and goals.objectives and goals.projects
    assert at_risk(goals, TODAY)


def test_tonys_goals_cover_the_migration_and_on_call():
    goals = load_goals(goals_path(None, "tony"))
    texts = [flag.text for flag in at_risk(goals, TODAY)]
    assert any("Database migration" in text and text.startswith("Due in 5 days") for text in texts)
    assert any("On-call" in text and text.startswith("Key result behind") for text in texts)


def test_goals_path_defaults_to_the_shipped_directory(tmp_path: Path):
    assert goals_path(None, "Tony").name == "tony.yaml"
    assert goals_path(None, "tony").parent.name == "goals"
    assert goals_path(tmp_path, "maya") == tmp_path / "maya.yaml"
    with pytest.raises(ValueError):
        goals_path(None, "../etc/passwd")


def test_dates_and_priority_words_are_parsed(tmp_path: Path):
    goals = load_goals(good(tmp_path, priority="High"))
    assert goals.projects[0].due == date(2026, 11, 30)
    assert goals.projects[0].priority == "p1"


def test_progress_is_current_over_target_clamped():
    assert KeyResult(description="x", target=10, current=4).progress == pytest.approx(0.4)
    assert KeyResult(description="x", target=10, current=15).progress == 1.0
    assert KeyResult(description="x", target=10, current=-2).progress == 0.0


def sample(**project: object) -> Goals:
    defaults: dict[str, object] = {"name": "Database migration", "status": "active", "priority": "p0", "due": None}
    return Goals(
        mission="m",
        quarter="2026-Q4",
        objectives=[
            Objective(
                title="Fast API",
                key_results=[
                    KeyResult(description="Cut p95 API latency to 200 ms", target=10, current=4, unit="services"),
                    KeyResult(description="Runbooks", target=10, current=6),
                ],
            )
        ],
        projects=[Project.model_validate(defaults | project)],
    )


def test_key_results_under_half_way_are_flagged():
    flags = at_risk(sample(), TODAY)
    assert flags == [Flag("key_result_behind", "Key result behind: Cut p95 API latency to 200 ms (40% of target)")]


def test_quarter_fraction_raises_the_bar():
    texts = [flag.text for flag in at_risk(sample(), TODAY, quarter_fraction=0.7)]
    assert texts == [
        "Key result behind: Cut p95 API latency to 200 ms (40% of target)",
        "Key result behind: Runbooks (60% of target)",
    ]
    with pytest.raises(ValueError):
        at_risk(sample(), TODAY, quarter_fraction=1.5)


@pytest.mark.parametrize(
    ("due", "status", "expected"),
    [
        (date(2026, 11, 28), "active", [Flag("due_soon", "Due in 3 days: Database migration (p0, active)")]),
        (date(2026, 12, 2), "active", [Flag("due_soon", "Due in 7 days: Database migration (p0, active)")]),
        (date(2026, 12, 3), "active", []),
        (date(2026, 11, 25), "planned", [Flag("due_soon", "Due today: Database migration (p0, planned)")]),
        (date(2026, 11, 24), "active", [Flag("overdue", "Overdue by 1 day: Database migration (p0, active)")]),
        (date(2026, 11, 20), "done", []),
        (None, "blocked", [Flag("blocked", "Blocked: Database migration (p0)")]),
        (
            date(2026, 11, 27),
            "blocked",
            [
                Flag("due_soon", "Due in 2 days: Database migration (p0, blocked)"),
                Flag("blocked", "Blocked: Database migration (p0, due 2026-11-27)"),
            ],
        ),
    ],
)
def test_project_flags(due: date | None, status: str, expected: list[Flag]):
    flags = [flag for flag in at_risk(sample(due=due, status=status), TODAY) if flag.kind != "key_result_behind"]
    assert flags == expected


def test_horizon_is_adjustable():
    goals = sample(due=date(2026, 12, 9))
    assert not [f for f in at_risk(goals, TODAY) if f.kind == "due_soon"]
    assert [f.text for f in at_risk(goals, TODAY, horizon_days=14) if f.kind == "due_soon"] == [
        "Due in 14 days: Database migration (p0, active)"
    ]


def test_brief_lists_goals_flags_and_the_instruction():
    goals = sample(due=date(2026, 11, 28))
    flags = at_risk(goals, TODAY)
    text = brief(goals, flags)
    assert "Quarter: 2026-Q4" in text and "m" in text
    assert "Fast API" in text and "4/10 services (40%)" in text
    assert "- Due in 3 days: Database migration (p0, active)" in text
    assert text.endswith(REVIEW_INSTRUCTION)
    assert "nothing flagged" in brief(goals, [])


def test_to_dict_is_json_safe():
    goals = sample(due=date(2026, 11, 28))
    data = to_dict(goals, at_risk(goals, TODAY))
    json.dumps(data)
    assert data["projects"][0]["due"] == "2026-11-28"
    assert data["objectives"][0]["key_results"][0]["progress"] == pytest.approx(0.4)
    assert {"kind": "due_soon", "text": "Due in 3 days: Database migration (p0, active)"} in data["flags"]


def test_bad_type_is_named(tmp_path: Path):
    message = problem(good(tmp_path, current="lots"))
    assert "objectives.0.key_results.0.current: Input should be a valid number" in message


def test_missing_mission_is_named(tmp_path: Path):
    path = write(
        tmp_path, GOOD.format(current=1, priority="p0", due="2026-12-01").replace("mission: Keep the lights on.\n", "")
    )
    assert f"{path}: mission: Field required" in problem(path)


def test_zero_target_is_named(tmp_path: Path):
    path = write(tmp_path, GOOD.format(current=1, priority="p0", due="2026-12-01").replace("target: 8", "target: 0"))
    assert f"{path}: objectives.0.key_results.0.target: must be greater than 0" in problem(path)


def test_bad_date_is_named(tmp_path: Path):
    path = good(tmp_path, due="2026-13-01")
    assert f"{path}: projects.0.due:" in problem(path)


def test_bad_quarter_and_priority_are_named(tmp_path: Path):
    text = GOOD.format(current=1, priority="urgent", due="2026-12-01").replace("2026-Q4", "Q4 2026")
    message = problem(write(tmp_path, text))
    assert "quarter: a quarter like '2026-Q4'" in message
    assert "projects.0.priority:" in message


def test_unknown_field_is_named(tmp_path: Path):
    path = write(tmp_path, GOOD.format(current=1, priority="p0", due="2026-12-01") + "owner: Tony\n")
    assert f"{path}: owner: unknown field (a typo?)" in problem(path)


def test_bad_yaml_gives_the_line(tmp_path: Path):
    path = write(tmp_path, "mission: ok\nquarter: 2026-Q4\nobjectives: [\n  - title: x\n")
    message = problem(path)
    assert message.startswith(f"{path}: file: invalid YAML (line ")


def test_top_level_must_be_a_mapping(tmp_path: Path):
    assert "top level: expected a mapping" in problem(write(tmp_path, "- just\n- a list\n"))
    assert "top level: expected a mapping" in problem(write(tmp_path, "", name="empty.yaml"))


def test_missing_file_is_named(tmp_path: Path):
    path = goals_path(tmp_path, "zoe")
    assert problem(path) == f"{path}: file: missing (this persona has no goals file)"


def test_unreadable_file_is_named(tmp_path: Path):
    path = write(tmp_path, "")
    path.write_bytes(b"\xff\xfe\x00bad")
    assert "file: cannot read it" in problem(path)
