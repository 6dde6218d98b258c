"""troupe's OpenAPI spec as client generators read it."""

from __future__ import annotations

from typing import Any

from troupe.app import create_routes


def test_every_operation_has_its_own_id() -> None:
    gateway: Any = None  # the spec does not need a running troupe
    spec = create_routes(gateway).openapi()
    ids = [operation["operationId"] for path in spec["paths"].values() for operation in path.values()]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    assert {"life_trigger_get", "life_trigger_post"} <= set(ids)
