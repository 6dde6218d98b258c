"""ray_cluster.yaml must be a config `ray up` accepts: it is checked against Ray's own schema."""

import json
from pathlib import Path

import jsonschema
import ray
import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_cluster_yaml_matches_rays_schema():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    jsonschema.validate(config, schema)
    assert config["head_node_type"] in config["available_node_types"]
    assert any("troupe serve" in cmd for cmd in config["head_start_ray_commands"])
    assert any("pip install" in cmd for cmd in config["setup_commands"])
