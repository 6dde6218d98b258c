"""Persona files: YAML front matter plus Markdown prompt layers, validated on load.

A bad file stops start-up with `<file>: <field>: <problem>`; `check_personas` lists every problem.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from troupe.core.chat import estimate_tokens
from troupe.core.errors import ConfigError, PersonaNotFound
from troupe.core.schedule import ACTIVITIES, validate

SHIPPED = Path(__file__).resolve().parent.parent / "personas"
LAYER_NAMES = ("soul", "identity", "knowledge", "instructions")
REQUIRED_LAYERS = ("soul", "identity", "instructions")
KNOWN_TOOLS = ("spawn_agent", "remember", "recall", "ask_persona", "schedule_callback")
EXECUTIVE_ORDER = ("alex", "tony", "maya", "jordan", "riley")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h)?\s*$")


class PersonaFileError(ConfigError):
    """A persona file is malformed; the message names the file, the field and the problem."""


class SupervisionSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    strategy: Literal["restart", "stop", "escalate", "restart_all"] = "restart"
    max_restarts: int = Field(default=3, ge=0, le=1000)
    window_s: float = Field(default=60.0, gt=0, alias="window")

    @field_validator("window_s", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        if isinstance(value, str):
            match = _DURATION.match(value)
            if not match:
                raise ValueError(f"a duration like 60, '60s', '5m' or '1h', got {value!r}")
            return float(match.group(1)) * {"s": 1, "m": 60, "h": 3600, None: 1}[match.group(2)]
        return value


class Layer(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    text: str
    version: str
    token_estimate: int

    @classmethod
    def of(cls, name: str, text: str) -> Layer:
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        return cls(name=name, text=text, version=digest, token_estimate=estimate_tokens(text))


class FrontMatter(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=40)
    role: str = Field(min_length=1)
    kind: Literal["executive", "specialist"] = "executive"
    reports_to: str | None = None
    model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    temperature: float = Field(default=0.7, ge=0, le=2)
    budget_usd: float = Field(ge=0)
    token_budget: int = Field(default=2000, gt=0)
    voice_id: str | None = None
    timezone: str = "UTC"
    focus_areas: tuple[str, ...] = ()
    tools: tuple[str, ...] = ()
    team: tuple[str, ...] = ()
    supervision: SupervisionSpec = SupervisionSpec()
    schedule: dict[str, str] = Field(default_factory=dict)
    news_sources: tuple[str, ...] = ()
    blocked_topics: tuple[str, ...] = ()

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_\- ]*", value):
            raise ValueError("letters, digits, spaces, - and _ only, starting with a letter")
        return value

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (use an IANA name like 'America/New_York')") from None
        return value

    @field_validator("tools")
    @classmethod
    def _tools(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [t for t in value if t not in KNOWN_TOOLS]
        if unknown:
            raise ValueError(f"unknown tool {unknown[0]!r}; known: {', '.join(KNOWN_TOOLS)}")
        return value

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: dict[str, str]) -> dict[str, str]:
        for activity, expression in value.items():
            if activity not in ACTIVITIES:
                raise ValueError(f"unknown activity {activity!r}; known: {', '.join(ACTIVITIES)}")
            problem = validate(str(expression))
            if problem:
                raise ValueError(f"{activity}: {problem}")
        return value

    @model_validator(mode="after")
    def _specialist(self) -> FrontMatter:
        if self.kind == "specialist" and not self.reports_to:
            raise ValueError("a specialist needs reports_to (the executive they work for)")
        return self


class PersonaDef(FrontMatter):
    layers: tuple[Layer, ...]
    source: str

    @property
    def key(self) -> str:
        return self.name.lower()

    def layer(self, name: str) -> Layer | None:
        return next((layer for layer in self.layers if layer.name == name), None)

    @property
    def layers_tokens(self) -> int:
        return sum(layer.token_estimate for layer in self.layers)


def _split(text: str, source: str) -> tuple[dict[str, Any], str]:
    if not text.startswith("---"):
        raise PersonaFileError(f"{source}: front matter: the file must start with a '---' YAML block")
    try:
        _, header, body = text.split("---", 2)
    except ValueError:
        raise PersonaFileError(f"{source}: front matter: no closing '---'") from None
    try:
        data = yaml.safe_load(header) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 2})" if mark else ""
        raise PersonaFileError(f"{source}: front matter: invalid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise PersonaFileError(f"{source}: front matter: expected a mapping of fields")
    return data, body


def _layers(body: str, source: str) -> tuple[Layer, ...]:
    sections: dict[str, list[str]] = {}
    current: str | None = None
    for line in body.splitlines():
        heading = re.match(r"^##\s+(.+?)\s*$", line)
        if heading:
            current = heading.group(1).strip().lower()
            if current not in LAYER_NAMES:
                raise PersonaFileError(
                    f"{source}: layers: unknown section '## {heading.group(1)}'; expected {', '.join(LAYER_NAMES)}"
                )
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
    missing = [name for name in REQUIRED_LAYERS if not "\n".join(sections.get(name, [])).strip()]
    if missing:
        raise PersonaFileError(f"{source}: layers: missing or empty section '## {missing[0].title()}'")
    return tuple(
        Layer.of(name, "\n".join(sections[name]).strip())
        for name in LAYER_NAMES
        if "\n".join(sections.get(name, [])).strip()
    )


def field_problems(exc: ValidationError, source: str, top: str) -> str:
    """One `<file>: <field.path>: <problem>` line per problem pydantic found (`top` names the whole)."""
    problems = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or top
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field (a typo?)"
        problems.append(f"{source}: {field}: {message}")
    return "\n".join(problems)


def parse_persona(path: Path) -> PersonaDef:
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PersonaFileError(f"{source}: file: cannot read it: {exc}") from None
    data, body = _split(text, source)
    layers = _layers(body, source)
    try:
        persona = PersonaDef(**data, layers=layers, source=source)
    except ValidationError as exc:
        raise PersonaFileError(field_problems(exc, source, "front matter")) from None
    if persona.layers_tokens > persona.token_budget:
        raise PersonaFileError(
            f"{source}: layers: {persona.layers_tokens} estimated tokens exceed token_budget {persona.token_budget}"
        )
    return persona


class PersonaCatalog:
    """Every persona, by case-insensitive name. Immutable and picklable: it travels to every actor."""

    def __init__(self, personas: list[PersonaDef]) -> None:
        def order(p: PersonaDef) -> tuple[int, int, str]:
            rank = EXECUTIVE_ORDER.index(p.key) if p.key in EXECUTIVE_ORDER else len(EXECUTIVE_ORDER)
            return (0 if p.kind == "executive" else 1, rank, p.key)

        self._personas = tuple(sorted(personas, key=order))
        self._by_key = {p.key: p for p in self._personas}

    def find(self, name: str) -> PersonaDef | None:
        return self._by_key.get(name.strip().lower())

    def get(self, name: str) -> PersonaDef:
        found = self.find(name)
        if found is None:
            raise PersonaNotFound(f"Unknown persona {name!r}. Known: {', '.join(self.names())}", param="model")
        return found

    def executives(self) -> list[PersonaDef]:
        return [p for p in self._personas if p.kind == "executive"]

    def specialists(self) -> list[PersonaDef]:
        return [p for p in self._personas if p.kind == "specialist"]

    def team_of(self, name: str) -> list[PersonaDef]:
        return [self.get(member) for member in self.get(name).team]

    def names(self) -> list[str]:
        return [p.name for p in self._personas]

    def __iter__(self) -> Iterator[PersonaDef]:
        return iter(self._personas)

    def __len__(self) -> int:
        return len(self._personas)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.find(name) is not None


def _cross_check(personas: list[PersonaDef]) -> list[str]:
    problems: list[str] = []
    by_key: dict[str, PersonaDef] = {}
    for persona in personas:
        if persona.key in by_key:
            problems.append(f"{persona.source}: name: {persona.name!r} is also defined in {by_key[persona.key].source}")
        by_key[persona.key] = persona
    for persona in personas:
        if persona.reports_to:
            boss = by_key.get(persona.reports_to.lower())
            if boss is None or boss.kind != "executive":
                problems.append(f"{persona.source}: reports_to: {persona.reports_to!r} is not an executive")
        for member in persona.team:
            found = by_key.get(member.lower())
            if found is None:
                problems.append(f"{persona.source}: team: no persona named {member!r}")
            elif (found.reports_to or "").lower() != persona.key:
                problems.append(f"{persona.source}: team: {member} reports to {found.reports_to}, not {persona.name}")
    return problems


def check_personas(directory: Path | None = None) -> tuple[list[PersonaDef], list[str]]:
    """Every valid persona and every problem line (for `troupe personas`)."""
    folder = Path(directory) if directory else SHIPPED
    if not folder.is_dir():
        return [], [f"{folder}: directory: not found"]
    valid: list[PersonaDef] = []
    problems: list[str] = []
    for path in sorted(folder.glob("*.md")):
        try:
            valid.append(parse_persona(path))
        except PersonaFileError as exc:
            problems.extend(exc.message.splitlines())
    if not valid and not problems:
        problems.append(f"{folder}: directory: no persona files (*.md)")
    problems.extend(_cross_check(valid))
    return valid, problems


def load_personas(directory: Path | None = None) -> PersonaCatalog:
    """Load and validate every persona; any problem stops start-up, listing them all."""
    valid, problems = check_personas(directory)
    if problems:
        raise PersonaFileError("invalid persona files:\n" + "\n".join(f"  {p}" for p in problems))
    return PersonaCatalog(valid)
