"""Closed by default, through both doors (uvicorn in-process, and Ray Serve's replica) with real HTTP on
loopback: no key is 401 everywhere but the probes, each role reaches what it may, a client key's callers
are its own, a foreign Host or Origin gets nothing, and the panel's cookie cannot be driven cross-site."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from ray import serve

from tests.integration.conftest import make_settings, wait_until_up
from troupe.app import Gateway, create_app, serve_with_ray
from troupe.runtime import Runtime
from troupe.store import Store
from troupe.testing.loopback import free_port, serving

ADMIN = "admin-key-0123456789abcdef"
OPERATOR = "operator-key-0123456789abcdef"
CLIENT = "client-key-0123456789abcdef"
PLATFORM = "platform-key-0123456789abcdef"
OTHER_CLIENT = "other-client-key-0123456789"
KEYS = f"root:admin:{ADMIN}, ops:operator:{OPERATOR}, app:client:{CLIENT}, vapi:platform:{PLATFORM}, " \
       f"rival:client:{OTHER_CLIENT}"  # fmt: skip
PHONE = "+14155550100"
CHAT = {"model": "tony", "messages": [{"role": "user", "content": "Hello"}]}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def runtime(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    tmp: Path = tmp_path_factory.mktemp("security")
    port = free_port()
    started = Runtime.start(
        make_settings(tmp, api_keys=KEYS, insecure=False, port=port, rate_limit_per_minute=0, max_sessions=6)
    )
    yield started
    started.stop()


@pytest.fixture(scope="module", params=["uvicorn", "serve"])
def door(request: pytest.FixtureRequest, runtime: Runtime) -> Iterator[str]:
    if request.param == "uvicorn":
        app = create_app(Gateway(runtime.settings, runtime.catalog, runtime.orchestrator, runtime.client()))
        with serving(app) as url:
            yield url
        return
    serve_with_ray(runtime, blocking=False)
    url = f"http://127.0.0.1:{runtime.settings.port}"
    wait_until_up(url)
    yield url
    serve.shutdown()


ROUTES = [
    ("POST", "/v1/chat/completions"), ("POST", "/chat/completions"), ("GET", "/v1/models"), ("GET", "/models"),
    ("POST", "/v1/elevenlabs-llm"), ("GET", "/api/status"), ("GET", "/api/processes"), ("GET", "/api/sessions"),
    ("GET", "/api/personas"), ("GET", "/api/schedules"), ("GET", "/api/posts"), ("GET", "/api/events"),
    ("PATCH", "/api/schedules/tony.news"), ("POST", "/api/sessions/x/end"), ("GET", "/internal/life/trigger"),
    ("POST", "/internal/life/trigger"), ("GET", "/metrics"), ("GET", "/docs"), ("GET", "/openapi.json"),
    ("GET", "/no/such/route"),
]  # fmt: skip


def test_no_key_is_refused_everywhere_but_the_probes(door: str) -> None:
    for method, path in ROUTES:
        response = httpx.request(method, f"{door}{path}", json={}, timeout=10)
        assert response.status_code == 401, (method, path, response.status_code)
        assert response.json()["error"]["code"] == "invalid_api_key" and "Traceback" not in response.text
        assert response.headers["www-authenticate"] == "Bearer"
    wrong = httpx.get(f"{door}/api/status", headers=bearer("not-a-key-at-all-0000"))
    assert wrong.status_code == 401 and ADMIN not in wrong.text
    assert httpx.get(f"{door}/health").status_code == 200
    ready = httpx.get(f"{door}/ready")
    assert ready.status_code == 200 and all(key not in ready.text for key in (ADMIN, OPERATOR, CLIENT, PLATFORM))


def test_each_role_reaches_what_it_may_and_no_more(door: str) -> None:
    def status(key: str, method: str, path: str, **kwargs: Any) -> int:
        return httpx.request(method, f"{door}{path}", headers=bearer(key), timeout=30, **kwargs).status_code

    for key in (ADMIN, CLIENT, PLATFORM):
        assert status(key, "POST", "/v1/chat/completions", json=CHAT) == 200, key
        assert status(key, "GET", "/v1/models") == 200
    assert status(OPERATOR, "POST", "/v1/chat/completions", json=CHAT) == 403
    for key in (ADMIN, OPERATOR):
        assert status(key, "GET", "/api/status") == 200
        assert status(key, "GET", "/metrics") == 200
        assert status(key, "GET", "/internal/life/trigger") == 400  # its help text: which activity?
    for key in (CLIENT, PLATFORM):
        assert status(key, "GET", "/api/status") == 403
        assert status(key, "GET", "/api/sessions") == 403
        assert status(key, "POST", "/internal/life/trigger", params={"activity": "post"}) == 403
    assert status(CLIENT, "GET", "/openapi.json") == 200  # the docs are for any key holder
    client = openai.OpenAI(base_url=f"{door}/v1", api_key=CLIENT, max_retries=0)
    assert client.chat.completions.create(model="maya", messages=CHAT["messages"]).choices[0].message.content
    with pytest.raises(openai.PermissionDeniedError):
        openai.OpenAI(base_url=f"{door}/v1", api_key=OPERATOR, max_retries=0).models.list()


def test_a_client_keys_asserted_caller_is_its_own(door: str, runtime: Runtime) -> None:
    """The platform's +14155550100 and a client saying +14155550100 are two callers: the client never
    continues the platform caller's conversation nor reads their memories; two clients are apart too."""
    tag = door.rsplit(":", 1)[1]
    phone = f"+1415555{tag[-4:]:0>4}"
    said = {}
    for key, words in ((PLATFORM, "platform caller here"), (CLIENT, "client pretending"), (OTHER_CLIENT, "rival")):
        response = httpx.post(
            f"{door}/v1/chat/completions", timeout=30, headers={**bearer(key), "X-Vapi-Caller-Phone": phone},
            json={"model": "tony", "messages": [{"role": "user", "content": words}]},
        )  # fmt: skip
        assert response.status_code == 200, response.text
        said[key] = words

    async def check() -> None:
        store = await Store.open(runtime.settings.resolved_database_url, migrate=False)
        try:
            sessions = {s.caller_id: s for s in await store.list_sessions(status=None) if s.caller_id.endswith(phone)}
            assert set(sessions) == {phone, f"key:app:{phone}", f"key:rival:{phone}"}
            platform = [m.content for m in await store.load_messages(sessions[phone].id) if m.role == "user"]
            assert platform == ["platform caller here"]  # nobody else's words in the platform caller's transcript
            client = [m.content for m in await store.load_messages(sessions[f"key:app:{phone}"].id) if m.role == "user"]
            assert client == ["client pretending"]
            assert await store.get_caller(f"key:app:{phone}") is not None
            assert (await store.get_caller(f"key:app:{phone}")).phone is None  # not taken for a phone number
        finally:
            await store.close()

    asyncio.run(check())


def test_a_foreign_host_is_refused(door: str) -> None:
    for host in ("evil.example", "rebind.attacker.test:3000"):
        response = httpx.get(f"{door}/api/status", headers={**bearer(ADMIN), "Host": host})
        assert response.status_code == 421 and response.json()["error"]["code"] == "host_not_allowed"
    assert httpx.get(f"{door}/api/status", headers={**bearer(ADMIN), "Host": "localhost"}).status_code == 200


def test_a_foreign_origin_gets_no_cors_headers(door: str) -> None:
    origin = {"Origin": "https://evil.example"}
    answer = httpx.get(f"{door}/api/status", headers={**bearer(ADMIN), **origin})
    assert answer.status_code == 200 and "access-control-allow-origin" not in answer.headers
    preflight = httpx.options(f"{door}/api/status", headers={**origin, "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in preflight.headers


def test_the_panel_signs_in_by_cookie_which_cannot_be_driven_cross_site(door: str) -> None:
    with httpx.Client(base_url=door, timeout=10) as browser:
        assert browser.post("/api/login", json={"key": CLIENT}).status_code == 401  # not a panel key
        signed = browser.post("/api/login", json={"key": OPERATOR})
        assert signed.status_code == 200 and signed.json() == {"name": "ops", "role": "operator"}
        cookie = signed.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and OPERATOR.lower() not in cookie
        assert browser.get("/api/status").status_code == 200  # the cookie alone
        # a state change needs this door's own Origin: none, or another, is refused
        assert browser.post("/api/sessions/nobody/end", params={"persona": "tony"}).status_code == 403
        foreign = browser.post(
            "/api/sessions/nobody/end", params={"persona": "tony"}, headers={"Origin": "https://evil.example"}
        )
        assert foreign.status_code == 403
        own = browser.post("/api/sessions/nobody/end", params={"persona": "tony"}, headers={"Origin": door})
        assert own.status_code == 404  # let in; there is just no such session
        # a GET never runs a life activity for a cookie
        assert browser.get("/internal/life/trigger", params={"activity": "post"}).status_code == 403
        assert browser.post("/v1/chat/completions", json=CHAT).status_code == 403  # the cookie is not a client
        browser.post("/api/logout", headers={"Origin": door})
        assert browser.get("/api/status").status_code == 401
    forged = httpx.get(f"{door}/api/status", cookies={"troupe_session": f"ops.{int(time.time()) + 3600}.00ff"})
    assert forged.status_code == 401


def test_the_elevenlabs_llm_door_scopes_a_client_keys_caller_too(door: str, runtime: Runtime) -> None:
    tag = door.rsplit(":", 1)[1]
    body = {**CHAT, "user_id": f"el-{tag}"}
    assert httpx.post(f"{door}/v1/elevenlabs-llm", json=body, headers=bearer(CLIENT), timeout=30).status_code == 200
    assert httpx.post(f"{door}/v1/elevenlabs-llm", json=body, headers=bearer(PLATFORM), timeout=30).status_code == 200
    sessions = httpx.get(f"{door}/api/sessions", headers=bearer(ADMIN)).json()
    callers = {s["caller_id"] for s in sessions if s["caller_id"].endswith(f"el-{tag}")}
    assert len(callers) == 2 and any(c.startswith("key:app:") for c in callers), callers
