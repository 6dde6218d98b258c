"""A property-based run over troupe's own OpenAPI spec (schemathesis): no input makes it answer 500."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.integration.conftest import make_settings
from troupe.app import Gateway, create_app
from troupe.runtime import Runtime

KEY = "fuzz-admin-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
OPEN = {"/health", "/ready", "/"}


@pytest.fixture(scope="module")
def api_schema(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    tmp = tmp_path_factory.mktemp("fuzz")
    settings = make_settings(
        tmp,
        max_sessions=3,
        rate_limit_per_minute=0,
        api_keys=KEY,
        insecure=False,
        allowed_hosts="testserver",
        VAPI_SECRET="fuzz-vapi-secret-0123",
        ELEVENLABS_WEBHOOK_SECRET="fuzz-elevenlabs-secret-0123",
    )  # the ASGI client says Host: testserver; the webhooks are configured, so they check signatures
    runtime = Runtime.start(settings)
    app = create_app(Gateway(runtime.settings, runtime.catalog, runtime.orchestrator, runtime.client()))
    yield schemathesis.openapi.from_asgi("/openapi.json", app, headers=AUTH)
    runtime.stop()


def test_without_a_key_every_route_but_the_probes_answers_401(api_schema: Any) -> None:
    seen: set[int] = set()
    for result in api_schema.get_all_operations():
        operation = result.ok()
        if operation.path in OPEN or operation.path == "/api/login":  # the probes; signing in takes a key itself
            continue

        @given(case=operation.as_strategy())
        @settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case: Any) -> None:
            response = case.call()
            assert response.status_code == 401, f"{case.method} {case.path}: {response.status_code}"
            seen.add(response.status_code)

        check()
    assert seen == {401}


def test_no_input_causes_a_server_error(api_schema: Any) -> None:
    checked = []
    for result in api_schema.get_all_operations():
        operation = result.ok()
        if operation.path == "/api/events":  # an endless stream, not a request/response
            continue

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case: Any) -> None:
            response = case.call(headers=AUTH)
            assert response.status_code != 500, f"{case.method} {case.path}: {response.text[:300]}"
            assert "Traceback" not in response.text
            ctype = response.headers.get("content-type") or ""
            ctype = ctype[0] if isinstance(ctype, list) else ctype
            if response.status_code >= 400 and ctype.startswith("application/json"):
                body = response.json()
                assert "error" in body or "detail" in body, body

        check()
        checked.append(f"{operation.method.upper()} {operation.path}")
    assert "POST /v1/chat/completions" in checked and "GET /api/processes" in checked
