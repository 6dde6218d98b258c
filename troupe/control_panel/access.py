"""The door's outer layer, as plain ASGI (no per-chunk overhead on streams): the Host allow-list, who is
knocking (a bearer key, or the panel's session cookie) and what their role may reach, CORS on /api/*,
body-size limits by Content-Length, and request metrics by route.

Closed by default: with no key configured every route but /health, /ready and the panel's static shell
answers 401, unless troupe runs `--insecure` (loopback only). Webhooks and the voice WebSocket are let
through to check their platform's signature or a ticket themselves."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from typing import Any

from pydantic import SecretStr
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from troupe.config.keys import ApiKey, Keyring, Role
from troupe.config.settings import Settings
from troupe.control_panel.metrics import LATENCY, REQUESTS

OPEN = ("/health", "/ready", "/", "/favicon.ico")  # the panel's page is a static shell: its data needs a key
STATIC = "/static/"  # the panel's script, styles and vendored chart library: no data in them
SIGNED = ("/vapi/", "/slack/", "/elevenlabs/webhook", "/ws/")  # the platform's signature or a ticket decides
LOGIN = "/api/login"
DOCS = ("/docs", "/redoc", "/openapi.json")
COMPLETIONS = ("/v1/chat/completions", "/chat/completions", "/v1/models", "/models", "/v1/elevenlabs-llm")
PANEL = ("/api/", "/internal/", "/metrics")
UNSAFE = ("POST", "PUT", "PATCH", "DELETE")
ADMIN_ONLY = ("/api/audit",)  # who revealed or forgot whom: for admins, not for the operators it audits

COOKIE = "troupe_session"
COOKIE_ROLES: tuple[Role, ...] = ("admin", "operator")  # who may sign in to the panel
COOKIE_LIFETIME_S = 12 * 3600
INSECURE = ApiKey("insecure", "admin", SecretStr(""))


def _error(status: int, message: str, code: str, kind: str = "invalid_request_error") -> tuple[bytes, int]:
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode(), status


def roles_for(path: str) -> tuple[Role, ...] | None:
    """The roles that may reach `path` (None: it is open, or checks its own credentials)."""
    if path in OPEN or path == LOGIN or path.startswith(SIGNED) or path.startswith(STATIC):
        return None
    if path.startswith(COMPLETIONS):
        return ("admin", "client", "platform")
    if path.startswith(ADMIN_ONLY):
        return ("admin",)
    if path.startswith(PANEL):
        return ("admin", "operator")
    # docs, and any other path (a 404 is for those who may look)
    return ("admin", "operator", "client", "platform")


def cookie_for(key: ApiKey, now: float | None = None) -> str:
    """A session cookie value for a panel user: key name, expiry and a MAC made with the key itself
    (so rotating the key signs every such session out)."""
    expires = int((now or time.time()) + COOKIE_LIFETIME_S)
    return f"{key.name}.{expires}.{_mac(key, expires)}"


def _mac(key: ApiKey, expires: int) -> str:
    message = f"troupe-session|{key.name}|{expires}".encode()
    return hmac.new(key.secret.get_secret_value().encode(), message, hashlib.sha256).hexdigest()


def key_of_cookie(value: str, keyring: Keyring, now: float | None = None) -> ApiKey | None:
    name, _, rest = value.rpartition(".")
    name, _, expires = name.rpartition(".")
    key = keyring.named(name) if name else None
    if key is None or key.role not in COOKIE_ROLES or not expires.isdigit():
        return None
    if int(expires) < (now or time.time()):
        return None
    return key if hmac.compare_digest(_mac(key, int(expires)), rest) else None


def _cookie(headers: dict[bytes, bytes]) -> str | None:
    for part in headers.get(b"cookie", b"").decode("latin-1").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE and value:
            return value
    return None


def host_of(value: str) -> str:
    """'Example.com:3000' -> 'example.com'; '[::1]:3000' -> '::1'."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def same_origin(headers: dict[bytes, bytes]) -> bool:
    """The request comes from a page of this very door: its Origin names the Host it was sent to."""
    origin = headers.get(b"origin", b"").decode("latin-1")
    host = headers.get(b"host", b"").decode("latin-1").lower()
    if not origin or not host:
        return False
    _, _, authority = origin.partition("://")
    return authority.lower() == host


class Door:
    def __init__(self, app: ASGIApp, settings: Settings, keyring: Keyring | None = None) -> None:
        self.app = app
        self.settings = settings
        self.keyring = keyring if keyring is not None else settings.keyring()
        self.open = settings.insecure and not self.keyring  # --insecure: everyone is admin (loopback only)
        self.hosts = frozenset(settings.hosts_allowed)
        # which door replica answered (operators reading a trace; tests of several replicas)
        self.replica = (b"x-troupe-replica", secrets.token_hex(4).encode())
        origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
        self.cors = CORSMiddleware(
            app, allow_origins=origins, allow_methods=["GET", "POST", "PATCH", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type"],
        )  # fmt: skip

    def host_allowed(self, headers: dict[bytes, bytes]) -> bool:
        if "*" in self.hosts:
            return True
        host = headers.get(b"host")
        return host is not None and host_of(host.decode("latin-1")) in self.hosts

    def who(self, headers: dict[bytes, bytes]) -> tuple[ApiKey | None, bool]:
        """The key a request carries, and whether it came by the panel's cookie."""
        if self.open:
            return INSECURE, False
        scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
        if scheme.lower() == b"bearer" and token.strip():
            return self.keyring.find(token.strip()), False
        value = _cookie(headers)
        if value is not None:
            return key_of_cookie(value, self.keyring), True
        return None, False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if not self.host_allowed(headers):
            await self._refuse(scope, send, 421, "This troupe does not answer for that Host (TROUPE_ALLOWED_HOSTS).",
                               "host_not_allowed")  # fmt: skip
            return
        key, by_cookie = self.who(headers)
        scope.setdefault("state", {})["principal"] = key
        if scope["type"] == "websocket":  # the handler checks its ticket (or bearer key) and Origin
            await self.app(scope, receive, send)
            return
        path, method = scope["path"], scope["method"]
        began = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.replica]}
                route = scope.get("route")
                label = getattr(route, "path", None) or ("unmatched" if message["status"] == 404 else path)
                REQUESTS.labels(label, method, str(message["status"])).inc()
                LATENCY.labels(label, method).observe(time.perf_counter() - began)
            await send(message)

        refusal = self._refusal(path, method, key, by_cookie, headers)
        if refusal is not None:
            status, message, code = refusal
            body, status = _error(status, message, code)
            extra = {"www-authenticate": "Bearer"} if status == 401 else {}
            await self._reply(send_wrapper, status, body, extra)
            return
        length = headers.get(b"content-length")
        if length and length.isdigit() and int(length) > self.settings.max_body_bytes:
            body, status = _error(413, f"Request body is {int(length)} bytes; the limit is "
                                  f"{self.settings.max_body_bytes}.", "request_too_large")  # fmt: skip
            await self._reply(send_wrapper, status, body)
            return
        target = self.cors if path.startswith("/api/") else self.app
        await target(scope, receive, send_wrapper)

    def _refusal(
        self, path: str, method: str, key: ApiKey | None, by_cookie: bool, headers: dict[bytes, bytes]
    ) -> tuple[int, str, str] | None:
        if method == "OPTIONS" and path.startswith("/api/"):
            return None  # a CORS preflight carries no credentials; CORS answers it
        if path == "/metrics" and self.settings.metrics_public:
            return None
        if self.settings.public_docs and path.startswith(DOCS):
            return None
        allowed = roles_for(path)
        if allowed is None:
            return None
        if key is None:
            if not self.keyring and not self.settings.insecure:
                return 401, ("This troupe has no API key configured: `troupe serve` makes one in <data dir>/admin.key; "
                             "or set TROUPE_API_KEYS."), "invalid_api_key"  # fmt: skip
            return 401, "Missing or invalid API key: send 'Authorization: Bearer <key>'.", "invalid_api_key"
        if key.role not in allowed:
            return 403, f"A {key.role} key may not use {path}.", "forbidden"
        if by_cookie:
            if path == "/internal/life/trigger" and method == "GET":
                return 403, "Run life activities with POST from the panel, or GET with a key.", "forbidden"
            if method in UNSAFE and not same_origin(headers):
                return 403, "A signed-in request that changes state must come from this door's own page.", "forbidden"
            if method not in UNSAFE and method not in ("GET", "HEAD"):
                return 403, f"{method} is not allowed here.", "forbidden"
        return None

    async def _refuse(self, scope: Scope, send: Send, status: int, message: str, code: str) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
            return
        body, status = _error(status, message, code)
        await self._reply(send, status, body)

    @staticmethod
    async def _reply(send: Any, status: int, body: bytes, extra: dict[str, str] | None = None) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
