"""A persona's goals: mission, quarterly objectives and projects, loaded from `goals/<persona>.yaml`.

`at_risk` flags what needs attention today; `brief` turns goals and flags into the goals-review prompt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from troupe.core.errors import ConfigError
from troupe.core.persona_file import field_problems

SHIPPED = Path(__file__).resolve().parent.parent / "goals"
BEHIND = 0.5
REVIEW_INSTRUCTION = (
    "Write what is on track, what is at risk and what you will do about each flagged item, "
    "in your own voice, in a few sentences."
)
_PRIORITY_WORDS = {"high": "p1", "medium": "p2", "low": "p3"}
_QUARTER = re.compile(r"^\d{4}-Q[1-4]$")


class GoalsFileError(ConfigError):
    """A goals file is missing or malformed; the message names the file, the field and the problem."""


class KeyResult(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    description: str = Field(min_length=1)
    target: float = Field(allow_inf_nan=False)
    current: float = Field(default=0, allow_inf_nan=False)
    unit: str = ""

    @field_validator("target")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be greater than 0")
        return value

    @property
    def progress(self) -> float:
        return min(1.0, max(0.0, self.current / self.target))


class Objective(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    title: str = Field(min_length=1)
    key_results: list[KeyResult] = Field(min_length=1)


class Project(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    status: Literal["planned", "active", "blocked", "done"]
    priority: Literal["p0", "p1", "p2", "p3"]
    due: date | None = None

    @field_validator("priority", mode="before")
    @classmethod
    def _priority(cls, value: Any) -> Any:
        if isinstance(value, str):
            word = value.strip().lower()
            return _PRIORITY_WORDS.get(word, word)
        return value


class Goals(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    mission: str = Field(min_length=1)
    quarter: str
    objectives: list[Objective] = Field(min_length=1)
    projects: list[Project] = Field(default_factory=list)

    @field_validator("quarter")
    @classmethod
    def _quarter(cls, value: str) -> str:
        if not _QUARTER.match(value):
            raise ValueError(f"a quarter like '2026-Q4', got {value!r}")
        return value


class _Loader(yaml.SafeLoader):
    """Safe YAML that leaves dates as text, so a bad date is reported by pydantic with its field."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def goals_path(goals_dir: Path | None, persona_key: str) -> Path:
    """Where a persona's goals live: `<goals_dir>/<persona_key>.yaml`, by default the shipped `troupe/goals/`."""
    key = persona_key.strip().lower()
    if not key or Path(key).name != key or key.startswith("."):
        raise ValueError(f"not a persona key: {persona_key!r}")
    return (Path(goals_dir) if goals_dir else SHIPPED) / f"{key}.yaml"


def load_goals(path: Path) -> Goals:
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GoalsFileError(f"{source}: file: missing (this persona has no goals file)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise GoalsFileError(f"{source}: file: cannot read it: {exc}") from None
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise GoalsFileError(f"{source}: file: invalid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise GoalsFileError(f"{source}: top level: expected a mapping with mission, quarter and objectives")
    try:
        return Goals(**{str(key): value for key, value in data.items()})
    except ValidationError as exc:
        raise GoalsFileError(field_problems(exc, source, "top level")) from None


@dataclass(frozen=True)
class Flag:
    kind: Literal["key_result_behind", "due_soon", "overdue", "blocked"]
    text: str


def _days(n: int) -> str:
    return f"{n} day" if n == 1 else f"{n} days"


def _number(value: float) -> str:
    return f"{value:g}"


def at_risk(goals: Goals, today: date, *, horizon_days: int = 7, quarter_fraction: float | None = None) -> list[Flag]:
    """What needs attention today.

    A key result is behind below half way, or, given `quarter_fraction` (the share of the quarter
    already gone, 0..1), below that pace. Projects not done are flagged when due within
    `horizon_days` (inclusive), overdue, or blocked.
    """
    if quarter_fraction is not None and not 0 <= quarter_fraction <= 1:
        raise ValueError(f"quarter_fraction must be between 0 and 1, got {quarter_fraction}")
    threshold = BEHIND if quarter_fraction is None else quarter_fraction
    flags: list[Flag] = []
    for objective in goals.objectives:
        for kr in objective.key_results:
            if kr.progress < threshold:
                flags.append(
                    Flag("key_result_behind", f"Key result behind: {kr.description} ({kr.progress:.0%} of target)")
                )
    for project in goals.projects:
        if project.status == "done":
            continue
        label = f"{project.name} ({project.priority}, {project.status})"
        if project.due is not None:
            left = (project.due - today).days
            if left < 0:
                flags.append(Flag("overdue", f"Overdue by {_days(-left)}: {label}"))
            elif left == 0:
                flags.append(Flag("due_soon", f"Due today: {label}"))
            elif left <= horizon_days:
                flags.append(Flag("due_soon", f"Due in {_days(left)}: {label}"))
        if project.status == "blocked":
            due = f", due {project.due.isoformat()}" if project.due else ""
            flags.append(Flag("blocked", f"Blocked: {project.name} ({project.priority}{due})"))
    return flags


def brief(goals: Goals, flags: list[Flag]) -> str:
    """The text handed to the persona for its goals review."""
    lines = [f"Your mission: {goals.mission}", f"Quarter: {goals.quarter}", "", "Objectives:"]
    for number, objective in enumerate(goals.objectives, start=1):
        lines.append(f"{number}. {objective.title}")
        for kr in objective.key_results:
            unit = kr.unit if kr.unit in ("", "%") else f" {kr.unit}"
            lines.append(f"   - {kr.description}: {_number(kr.current)}/{_number(kr.target)}{unit} ({kr.progress:.0%})")
    if goals.projects:
        lines += ["", "Projects:"]
        for project in goals.projects:
            due = f", due {project.due.isoformat()}" if project.due else ""
            lines.append(f"- {project.name}: {project.priority}, {project.status}{due}")
    lines += ["", "Flagged:"]
    lines += [f"- {flag.text}" for flag in flags] or ["- nothing flagged today"]
    lines += ["", REVIEW_INSTRUCTION]
    return "\n".join(lines)


def to_dict(goals: Goals, flags: list[Flag]) -> dict[str, Any]:
    """Goals and flags, JSON-safe, for the API."""
    return {
        "mission": goals.mission,
        "quarter": goals.quarter,
        "objectives": [
            {
                "title": objective.title,
                "key_results": [
                    {
                        "description": kr.description,
                        "target": kr.target,
                        "current": kr.current,
                        "unit": kr.unit,
                        "progress": round(kr.progress, 4),
                    }
                    for kr in objective.key_results
                ],
            }
            for objective in goals.objectives
        ],
        "projects": [
            {
                "name": project.name,
                "status": project.status,
                "priority": project.priority,
                "due": project.due.isoformat() if project.due else None,
            }
            for project in goals.projects
        ],
        "flags": [{"kind": flag.kind, "text": flag.text} for flag in flags],
    }
