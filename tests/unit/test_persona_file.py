"""Persona files: the shipped company loads, and every kind of bad file is named precisely."""

from __future__ import annotations

from pathlib import Path

import pytest

from troupe.core.errors import PersonaNotFound
from troupe.core.persona_file import PersonaFileError, check_personas, load_personas, parse_persona

GOOD = """---
name: Zoe
role: Tester
budget_usd: 1
{extra}
---

## Soul
Careful.

## Identity
Zoe tests things.

## Instructions
Be brief.
"""


def write(tmp_path: Path, text: str, name: str = "zoe.md") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_shipped_company_loads():
    catalog = load_personas()
    executives = catalog.executives()
    assert [p.name for p in executives] == ["Alex", "Tony", "Maya", "Jordan", "Riley"]
    for executive in executives:
        team = catalog.team_of(executive.name)
        assert 3 <= len(team) <= 4
        assert all(member.reports_to == executive.name for member in team)
        assert executive.layer("soul") and executive.layer("instructions")
        assert executive.layers_tokens <= executive.token_budget
    assert len(set(catalog.names())) == len(catalog)
    assert catalog.get("TONY").role == "Chief Technology Officer"


def test_unknown_persona_lists_the_known_ones():
    with pytest.raises(PersonaNotFound) as caught:
        load_personas().get("zed")
    assert "Tony" in caught.value.message


def test_layers_have_versions_and_estimates(tmp_path: Path):
    persona = parse_persona(write(tmp_path, GOOD.format(extra="")))
    assert [layer.name for layer in persona.layers] == ["soul", "identity", "instructions"]
    assert all(len(layer.version) == 8 and layer.token_estimate > 0 for layer in persona.layers)


@pytest.mark.parametrize(
    ("extra", "field", "words"),
    [
        ("temperature: hot", "temperature", "number"),
        ("colour: blue", "colour", "unknown field"),
        ("supervision: {strategy: reboot}", "supervision.strategy", "restart"),
        ("supervision: {window: soon}", "supervision.window", "duration"),
        ("timezone: Mars/Olympus", "timezone", "time zone"),
        ("tools: [teleport]", "tools", "unknown tool"),
        ("schedule: {news: '61 9 * * *'}", "schedule", "cron"),
        ("kind: specialist", "front matter", "reports_to"),
    ],
)
def test_bad_fields_name_file_and_field(tmp_path: Path, extra: str, field: str, words: str):
    path = write(tmp_path, GOOD.format(extra=extra))
    with pytest.raises(PersonaFileError) as caught:
        parse_persona(path)
    message = caught.value.message
    assert str(path) in message and field in message and words in message


def test_bad_yaml_and_missing_layers(tmp_path: Path):
    with pytest.raises(PersonaFileError, match="invalid YAML"):
        parse_persona(write(tmp_path, "---\nname: [unclosed\n---\n## Soul\nx\n"))
    with pytest.raises(PersonaFileError, match="must start"):
        parse_persona(write(tmp_path, "no front matter"))
    with pytest.raises(PersonaFileError, match=r"layers: missing or empty section '## Identity'"):
        parse_persona(write(tmp_path, "---\nname: Zoe\nrole: r\nbudget_usd: 1\n---\n## Soul\nx\n## Instructions\ny\n"))
    with pytest.raises(PersonaFileError, match=r"budget_usd: Field required"):
        parse_persona(write(tmp_path, "---\nname: Zoe\nrole: r\n---\n## Soul\nx\n## Identity\ny\n## Instructions\nz\n"))


def test_layers_over_budget_are_rejected(tmp_path: Path):
    text = GOOD.format(extra="token_budget: 10").replace("Careful.", "Careful. " * 50)
    with pytest.raises(PersonaFileError, match=r"layers: \d+ estimated tokens exceed token_budget 10"):
        parse_persona(write(tmp_path, text))


def test_team_members_must_exist_and_report_to_the_executive(tmp_path: Path):
    write(tmp_path, GOOD.format(extra="team: [Ghost]"))
    valid, problems = check_personas(tmp_path)
    assert [p.name for p in valid] == ["Zoe"]
    assert problems == [f"{tmp_path / 'zoe.md'}: team: no persona named 'Ghost'"]
    with pytest.raises(PersonaFileError, match="Ghost"):
        load_personas(tmp_path)
