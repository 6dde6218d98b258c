"""deploy/kuberay/rayservice.yaml is a RayService KubeRay accepts (its CRD's own schema, vendored) and
what an operator relies on: probes, secrets from Secrets, the door's replicas, a worker group."""

from __future__ import annotations

import copy
import importlib
import inspect
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBERAY = ROOT / "deploy" / "kuberay"
SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|DATABASE_URL")


def strict(schema: Any) -> Any:
    """The CRD's schema with unknown fields refused, as `kubectl apply --validate=strict` refuses them
    (the API server would otherwise drop a misspelt field silently)."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema:
            if not schema.get("x-kubernetes-preserve-unknown-fields"):
                schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


@pytest.fixture(scope="module")
def schema() -> jsonschema.protocols.Validator:
    # the CRD is 1 MB of YAML: libyaml reads it in a second, PyYAML's Python reader in half a minute
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load((KUBERAY / "schema" / "ray.io_rayservices.yaml").read_text(), Loader=loader)
    assert crd["spec"]["names"]["kind"] == "RayService"
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    openapi = strict(v1["schema"]["openAPIV3Schema"])
    validator = jsonschema.validators.validator_for(openapi)
    validator.check_schema(openapi)
    return validator(openapi)


@pytest.fixture()
def service() -> dict[str, Any]:
    return yaml.safe_load((KUBERAY / "rayservice.yaml").read_text())  # type: ignore[no-any-return]


def containers(service: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = service["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [c for group in groups for c in group["template"]["spec"]["containers"]]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def serve_config(service: dict[str, Any]) -> dict[str, Any]:
    return yaml.safe_load(service["spec"]["serveConfigV2"])  # type: ignore[no-any-return]


def test_rayservice_matches_the_kuberay_crd(schema: jsonschema.protocols.Validator, service: dict[str, Any]) -> None:
    assert service["apiVersion"] == "ray.io/v1" and service["kind"] == "RayService"
    schema.validate(service)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("spec", "rayClusterConfig", "workerGroupSpecs", 0, "replicas"), "two"),  # not an integer
        (("spec", "rayClusterConfig", "headGroupSpec", "template", "spec", "containers", 0, "readinesProbe"), {}),
        (("spec", "serveConfigV2"), {"applications": []}),  # a YAML string, not an object
        (("spec", "rayClusterConfig", "workerGroupSpecs", 0, "groupName"), None),
    ],
)
def test_a_broken_rayservice_fails_validation(
    schema: jsonschema.protocols.Validator, service: dict[str, Any], path: tuple[Any, ...], value: Any
) -> None:
    broken = copy.deepcopy(service)
    node = broken
    for part in path[:-1]:
        node = node[part]
    if value is None:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        schema.validate(broken)


def test_serve_config_is_one_serve_accepts_and_its_builder_exists(service: dict[str, Any]) -> None:
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(serve_config(service))
    (app,) = config.applications
    module, _, name = app.import_path.partition(":")
    builder = getattr(importlib.import_module(module), name)
    assert len(inspect.signature(builder).parameters) == 1  # Serve calls an application builder with args
    (door,) = app.deployments
    assert door.name == "troupe-door"  # the name troupe.app gives the door's deployment
    assert config.http_options.port == 3000


def test_door_replicas_match_troupe_door_replicas_everywhere(service: dict[str, Any]) -> None:
    (door,) = serve_config(service)["applications"][0]["deployments"]
    for container in containers(service):
        assert env_of(container)["TROUPE_DOOR_REPLICAS"]["value"] == str(door["num_replicas"])
    workers = service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    # each replica needs a worker's `door` resource: the worker group holds one per replica
    assert door["ray_actor_options"]["resources"] == {"door": 1}
    assert sum(w["replicas"] for w in workers) == door["num_replicas"]
    assert all('\\"door\\": 1' in w["rayStartParams"]["resources"] for w in workers)


def test_secrets_come_from_kubernetes_secrets_never_literal_values(service: dict[str, Any]) -> None:
    for container in containers(service):
        env = env_of(container)
        for name, entry in env.items():
            if SECRET_NAME.search(name) and not name.endswith("_FILE"):
                assert "value" not in entry, f"{name} is written into the manifest"
                assert "secretKeyRef" in entry["valueFrom"], name
        assert env["TROUPE_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"]
        assert env["OPENAI_API_KEY"]["valueFrom"]["secretKeyRef"]["name"]
        # the platforms' secrets (open-ended: SLACK_BOT_TOKEN_<PERSONA>) come in whole from one Secret
        assert any("secretRef" in source for source in container["envFrom"])
        # the API keys file is a mounted Secret
        keys_dir = str(Path(env["TROUPE_API_KEYS_FILE"]["value"]).parent)
        assert any(m["mountPath"] == keys_dir for m in container["volumeMounts"])
    text = (KUBERAY / "rayservice.yaml").read_text()
    assert not re.search(r"(sk-[A-Za-z0-9]{16}|xox[bp]-|postgres(ql)?://[^:\s]+:[^@\s.]{3,}@)", text)


def test_workers_take_callers_when_ready_and_restart_when_dead(service: dict[str, Any]) -> None:
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["workerGroupSpecs"], "no worker group"
    for group in cluster["workerGroupSpecs"]:
        (container,) = group["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["serve"] == 3000  # KubeRay's Service targets the port named serve
        for probe, path in (("readinessProbe", "/ready"), ("livenessProbe", "/health"), ("startupProbe", "/health")):
            get = container[probe]["httpGet"]
            assert (get["path"], get["port"]) == (path, 3000), probe
            # the door answers only allowed Host names; a probe's Host is the pod IP unless set
            host = {h["name"]: h["value"] for h in get["httpHeaders"]}["Host"]
            assert host in env_of(container)["TROUPE_ALLOWED_HOSTS"]["value"].split(",")
        assert {"cpu", "memory"} <= container["resources"]["requests"].keys()


def test_head_keeps_kuberays_probes_and_takes_no_callers(service: dict[str, Any]) -> None:
    # KubeRay submits the Serve application only once the head is Ready: a /ready probe there would
    # wait for itself forever
    (head,) = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"]
    assert "readinessProbe" not in head and "livenessProbe" not in head
    assert service["spec"]["excludeHeadPodFromServeSvc"] is True
    assert {"cpu", "memory"} <= head["resources"]["requests"].keys()
