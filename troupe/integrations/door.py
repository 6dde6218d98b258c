"""What every door shares: the typed `Gateway` its routes reach through FastAPI's dependencies (settings,
personas, the orchestrator, the session client, caller and rate bookkeeping), reading a bounded JSON
body, and the key a request came in with (whose caller identity it may assert, and its rate)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any, Protocol

from fastapi import Depends, Request
from starlette.requests import HTTPConnection

from troupe.config.keys import ApiKey, Keyring
from troupe.config.settings import Settings
from troupe.control_panel.limits import RateLimiter
from troupe.core.caller import is_anonymous
from troupe.core.errors import InvalidRequest, TroupeError
from troupe.core.messages import TurnEvent, TurnRequest
from troupe.core.persona_file import PersonaCatalog
from troupe.integrations.known_calls import KnownCalls
from troupe.integrations.tickets import TicketBook
from troupe.store import Store


class Sessions(Protocol):
    """How a door runs a caller's turn (the runtime's `SessionClient`)."""

    def turn(self, request: TurnRequest) -> AsyncIterator[TurnEvent]: ...

    def forget(self, caller_id: str, persona: str) -> None: ...


@dataclass
class Gateway:
    """What the routes share: settings, personas, the orchestrator and the session client."""

    settings: Settings
    catalog: PersonaCatalog
    orchestrator: Any  # the orchestrator actor's Ray handle: its methods are called with .remote()
    client: Sessions
    known_calls: KnownCalls = field(init=False)
    limiter: RateLimiter = field(init=False)
    keyring: Keyring = field(init=False)
    tickets: TicketBook = field(default_factory=TicketBook)  # the voice WebSocket's single-use tickets

    _store: Store | None = None

    def __post_init__(self) -> None:
        # each replica counts its own share: N replicas together allow the configured rate
        replicas = self.settings.door_replicas if self.settings.door == "serve" else 1
        self.limiter = RateLimiter(-(-self.settings.rate_limit_per_minute // replicas))
        self.known_calls = KnownCalls(self.store)
        self.keyring = self.settings.keyring()  # read once: TROUPE_API_KEYS, the keys file, admin.key

    async def store(self) -> Store:
        """The door's own store handle (webhook de-duplication, reads), opened on first use."""
        if self._store is None:
            self._store = await Store.open_for(self.settings, "door")
        return self._store


def gateway_in(connection: HTTPConnection) -> Gateway:
    """The app's gateway, for a request or a WebSocket."""
    gateway: Gateway = connection.app.state.gateway
    return gateway


async def gateway_of(connection: HTTPConnection) -> Gateway:
    """The gateway as a dependency. Async though it awaits nothing: FastAPI runs a plain function
    dependency in a worker thread, a thread hop on every request (and about 200 ms on a door's first,
    while the thread pool starts)."""
    return gateway_in(connection)


GatewayDep = Annotated[Gateway, Depends(gateway_of)]


class BodyTooLarge(TroupeError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


async def read_json(request: Request, limit: int) -> Any:
    body = await request.body()
    if len(body) > limit:
        raise BodyTooLarge(f"Request body is {len(body)} bytes; the limit is {limit}.")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"Request body is not valid JSON: {exc}") from None


def principal(request: Request) -> ApiKey | None:
    """The key the access layer let this request in with (None: a route it does not guard)."""
    return getattr(request.state, "principal", None)


def trusts_identity(request: Request) -> bool:
    """The caller identity this request asserts is taken as given (a platform's or an admin's key)."""
    key = principal(request)
    return key is None or key.asserts_identity


def scoped(request: Request, caller: str) -> str:
    """The caller id as the request's key owns it: a client key's asserted caller is that key's own
    (`key:<name>:<caller>`); a trusted key's, and an anonymous one, stay as they are."""
    key = principal(request)
    if key is None or key.asserts_identity or is_anonymous(caller):
        return caller
    return f"key:{key.name}:{caller}"


def check_rate(request: Request, caller_id: str) -> None:
    """Charge a turn to its key, its client address and its caller (429 when any of them is spent)."""
    key = principal(request)
    address = request.client.host if request.client else None
    gateway_in(request).limiter.check(caller_id, key=key.name if key else None, address=address)
