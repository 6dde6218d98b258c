"""The Slack door: Events API requests at /slack/events (and /slack/events/{persona} for a persona with
its own Slack app), verified and acknowledged at once, then answered in the thread by the right persona.

A request's signature is checked once, here, by slack_sdk's SignatureVerifier (its window is five
minutes); Bolt's own check is turned off. A redelivered or replayed event is acknowledged, as Slack
requires, and processed only the first time its event id is seen."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from slack_bolt.adapter.starlette.async_handler import AsyncSlackRequestHandler
from slack_bolt.async_app import AsyncApp
from slack_bolt.authorization import AuthorizeResult
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient

from troupe.actors.models import ModelFactory, model_name_for
from troupe.clients.chat_model import ChatModel, complete
from troupe.clients.openai_api import error_json
from troupe.clients.outbound import OutboundFailed
from troupe.clients.slack_api import reason, send
from troupe.config.settings import Settings, platform_secret
from troupe.core.chat import ChatMessage, ModelRequest
from troupe.core.errors import TroupeError
from troupe.integrations.door import Gateway
from troupe.integrations.turns import addressed_persona, reply_text, user_turn
from troupe.store import Store

log = logging.getLogger(__name__)
router = APIRouter()

SOURCE = "slack"  # the store's name for Slack's event ids (claim_event)
ADMIN_WORDS = ("help", "agents", "sessions", "clear")
CHANNEL_PREFIX = "troupe-"
KEPT_SUBTYPES = (None, "file_share", "thread_broadcast")  # edits, joins, deletions are not someone talking
MAX_POST_CHARS = 39_000  # Slack truncates a message's text at 40,000 characters
NAME_TTL_S = 300.0
THREADS_KEPT = 5_000
ROUTER_TIMEOUT_S = 20.0

_MENTIONS = re.compile(r"^\s*(?:<@[UWB][A-Z0-9]+(?:\|[^>]*)?>[\s,:]*)+")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.:@+\-]")


# --- plain logic (unit-tested without Ray or HTTP)


@dataclass(frozen=True)
class SlackMessage:
    """Someone talking to troupe: a mention in a channel or a direct message."""

    event_id: str
    team: str
    channel: str
    channel_type: str
    user: str
    text: str
    ts: str
    thread_ts: str  # the thread the reply goes in: the message's own thread, or the message itself

    @property
    def caller_id(self) -> str:
        return thread_caller_id(self.team, self.channel, self.thread_ts)


def verified(verifier: SignatureVerifier, body: bytes, timestamp: str | None, signature: str | None) -> bool:
    """Slack's v0 signature and timestamp window, as slack_sdk checks them; a timestamp that is not a
    number or a body that is not UTF-8 is a refusal, not an error."""
    try:
        return verifier.is_valid(body=body, timestamp=timestamp, signature=signature)
    except (ValueError, UnicodeDecodeError):
        return False


def sign(secret: str, body: bytes, timestamp: str) -> str:
    """The X-Slack-Signature Slack would send (for tests, benchmarks and replaying events)."""
    return str(SignatureVerifier(secret).generate_signature(timestamp=timestamp, body=body))


def incoming(body: dict[str, Any]) -> SlackMessage | None:
    """The message an Events API callback carries, if it is a person talking to troupe; else None."""
    if body.get("type") != "event_callback" or not isinstance(body.get("event"), dict):
        return None
    event: dict[str, Any] = body["event"]
    if event.get("bot_id") or event.get("subtype") == "bot_message" or event.get("subtype") not in KEPT_SUBTYPES:
        return None  # the bot itself, other bots, and edits or channel notices
    kind = event.get("type")
    if kind == "message" and event.get("channel_type") != "im":
        return None  # in channels troupe answers mentions only (those come as app_mention)
    if kind not in ("app_mention", "message"):
        return None
    channel, ts, user = str(event.get("channel") or ""), str(event.get("ts") or ""), str(event.get("user") or "")
    if not (channel and ts and user):
        return None
    return SlackMessage(
        event_id=str(body.get("event_id") or ""),
        team=str(body.get("team_id") or event.get("team") or ""),
        channel=channel,
        channel_type=str(event.get("channel_type") or ("im" if channel.startswith("D") else "channel")),
        user=user,
        text=str(event.get("text") or ""),
        ts=ts,
        thread_ts=str(event.get("thread_ts") or ts),
    )


def strip_mentions(text: str) -> str:
    """'<@U123> maya: hi' -> 'maya: hi' (the leading mentions of the bot)."""
    return _MENTIONS.sub("", text, count=1).strip()


def thread_caller_id(team: str, channel: str, thread_ts: str) -> str:
    """A Slack thread is one session: the caller is the thread."""
    return _UNSAFE.sub("_", f"slack-{team}-{channel}-{thread_ts}")[:160]


def persona_of_channel(catalog: Any, name: str | None) -> str | None:
    """'troupe-maya' -> 'Maya'; any other channel name -> None."""
    if not name or not name.lower().startswith(CHANNEL_PREFIX):
        return None
    found = catalog.find(name[len(CHANNEL_PREFIX) :].replace("_", " ").replace("-", " "))
    found = found or catalog.find(name[len(CHANNEL_PREFIX) :])
    return found.name if found is not None else None


def admin_word(text: str, user: str, admins: tuple[str, ...]) -> str | None:
    """The admin word this message is, if it is one and its sender may use it; else None."""
    word = text.strip().strip(".!?").lower()
    return word if word in ADMIN_WORDS and user in admins else None


def admins_of(settings: Settings) -> tuple[str, ...]:
    return tuple(u.strip() for u in settings.slack_admin_users.split(",") if u.strip())


def router_prompt(catalog: Any) -> str:
    lines = []
    for persona in catalog:
        focus = ", ".join(persona.focus_areas) if getattr(persona, "focus_areas", None) else ""
        lines.append(f"- {persona.name}: {persona.role}" + (f" (focus: {focus})" if focus else ""))
    return (
        "You route messages posted in a company's Slack to the colleague best placed to answer.\n"
        "The colleagues:\n" + "\n".join(lines) + "\nAnswer with the one colleague's name and nothing else."
    )


def parse_choice(catalog: Any, answer: str) -> str | None:
    """The persona an answer names first (whole words, any case); None if it names nobody."""
    best: tuple[int, str] | None = None
    for name in catalog.names():
        match = re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", answer, re.IGNORECASE)
        if match and (best is None or match.start() < best[0]):
            best = (match.start(), name)
    return best[1] if best else None


async def choose_persona(model: ChatModel, model_name: str, catalog: Any, text: str, default: str) -> str:
    """One short completion asking which persona should answer; the default when the answer names nobody."""
    request = ModelRequest(
        messages=(ChatMessage(role="system", content=router_prompt(catalog)),
                  ChatMessage(role="user", content=text[:2000])),
        model=model_name, speaker="Router", temperature=0.0, max_tokens=12,
    )  # fmt: skip
    try:
        async with asyncio.timeout(ROUTER_TIMEOUT_S):
            result = await complete(model, request)
    except Exception as exc:  # the router is a nicety: a model that is down still leaves the default
        log.warning("Slack router could not ask the model (%s); %s answers", type(exc).__name__, default)
        return default
    return parse_choice(catalog, result.content) or default


# --- the door's state: one per app


@dataclass
class SlackApp:
    """One Slack app troupe answers as: the shared one, or a persona's own."""

    persona: str | None
    secret: str
    token: str | None
    client: AsyncWebClient
    handler: AsyncSlackRequestHandler
    verifier: SignatureVerifier


@dataclass
class _ChannelQueue:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class SlackDoor:
    """What the Slack routes keep between requests: the apps, the store (for event ids), channel
    names, each channel's queue, and the persona each thread is talking to."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.settings: Settings = gateway.settings
        self.catalog = gateway.catalog
        self.admins = admins_of(self.settings)
        self.models = ModelFactory(self.settings)
        self.apps: dict[str, SlackApp] = {}
        self._store: Store | None = None
        self._store_lock = asyncio.Lock()
        self._names: dict[tuple[str, str], tuple[str | None, float]] = {}
        self._queues: dict[tuple[str, str], _ChannelQueue] = {}
        self._threads: OrderedDict[str, str] = OrderedDict()
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- apps

    def credentials(self, persona: str | None) -> tuple[str | None, str | None]:
        if persona is None:
            secret, token = self.settings.slack_signing_secret, self.settings.slack_bot_token
            return (secret.get_secret_value() if secret else None, token.get_secret_value() if token else None)
        return platform_secret("SLACK_SIGNING_SECRET", persona), platform_secret("SLACK_BOT_TOKEN", persona)

    def app_for(self, persona: str | None, secret: str, token: str | None) -> SlackApp:
        key = persona or ""
        known = self.apps.get(key)
        if known is not None and known.secret == secret and known.token == token:
            return known
        # our own retries (post_reply) are the only ones, so a failure is retried on one schedule
        client = AsyncWebClient(token=token, base_url=self.settings.slack_api_base_url, timeout=10, retry_handlers=[])

        async def authorize(enterprise_id: str | None, team_id: str | None) -> AuthorizeResult:
            # no auth.test on the way in: acknowledging must not wait for (or fail with) Slack's API
            return AuthorizeResult(enterprise_id=enterprise_id, team_id=team_id, bot_token=token)

        # Bolt's own client stays token-less: it never calls Slack here, and troupe posts through `client`
        quiet = AsyncWebClient(base_url=self.settings.slack_api_base_url)
        # the door has verified the signature before Bolt sees the request: Bolt does not check it again
        bolt = AsyncApp(signing_secret=secret, authorize=authorize, client=quiet, process_before_response=False,
                        request_verification_enabled=False)  # fmt: skip
        app = SlackApp(persona, secret, token, client, AsyncSlackRequestHandler(bolt), SignatureVerifier(secret))

        async def on_event(body: dict[str, Any]) -> None:
            # Bolt has acknowledged already; the turn runs after the 200 is sent
            self.spawn(self.handle(app, body))

        bolt.event(re.compile(".*"))(on_event)
        self.apps[key] = app
        return app

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def store(self) -> Store:
        if self._store is None:
            async with self._store_lock:
                if self._store is None:
                    self._store = await Store.open_for(self.settings, "door-slack")
        return self._store

    # --- one event, after the acknowledgement

    async def handle(self, app: SlackApp, body: dict[str, Any]) -> None:
        message = incoming(body)
        if message is None:
            return
        try:
            async with self._queue(message.team, message.channel):
                if message.event_id and not await self._claim(message.event_id):
                    return
                reply = await self._answer(app, message)
                if reply:
                    await post_reply(app.client, message.channel, message.thread_ts, reply,
                                     retries=self.settings.outbound_retries)  # fmt: skip
        except Exception:  # never into the request, never silently
            log.exception("Slack event %s could not be handled", message.event_id or "?")

    @asynccontextmanager
    async def _queue(self, team: str, channel: str) -> AsyncIterator[None]:
        """One message at a time per channel, in arrival order (asyncio.Lock is FIFO): a second message
        waits its turn instead of being dropped or overtaking the first."""
        key = (team, channel)
        queue = self._queues.setdefault(key, _ChannelQueue())
        queue.users += 1
        try:
            async with queue.lock:
                yield
        finally:
            queue.users -= 1
            if queue.users == 0:
                self._queues.pop(key, None)

    async def _claim(self, event_id: str) -> bool:
        """Slack redelivers an event it thinks was missed (X-Slack-Retry-Num); the store's event ids make
        the first delivery the only one processed, across restarts and replicas."""
        try:
            return await (await self.store()).claim_event(SOURCE, event_id)
        except Exception as exc:
            # without the store the turn cannot run either; better unanswered than answered twice
            log.error("Slack event %s not processed: the store is unavailable (%s)", event_id, type(exc).__name__)
            return False

    async def _answer(self, app: SlackApp, message: SlackMessage) -> str:
        text = strip_mentions(message.text)
        word = admin_word(text, message.user, self.admins)
        if word is not None:
            return await self._admin(word, message)
        persona, text = await self.route(app, message, text)
        self._remember_thread(message.caller_id, persona)
        request = user_turn(message.caller_id, persona, text[: self.settings.max_message_chars] or "Hello!")
        try:
            reply = await reply_text(self.gateway, request)
        except TroupeError as exc:
            return f"Sorry, {persona} could not answer: {exc.message}"
        if not reply:
            log.warning("%s gave an empty reply in Slack thread %s", persona, message.caller_id)
            return ""
        return reply if app.persona else f"*{persona}:* {reply}"

    async def route(self, app: SlackApp, message: SlackMessage, text: str) -> tuple[str, str]:
        """Who answers: the persona whose own app this is; a name at the start ('maya: ...'); the persona
        this thread is already talking to; a #troupe-<persona> channel; the model's choice; the default."""
        if app.persona is not None:
            return app.persona, text
        named, rest = addressed_persona(self.catalog, text)
        if named is not None:
            return named, rest
        earlier = self._threads.get(message.caller_id) or await self._thread_persona(message.caller_id)
        if earlier is not None:
            return earlier, text
        if message.channel_type != "im":
            by_channel = persona_of_channel(self.catalog, await self.channel_name(app, message.team, message.channel))
            if by_channel is not None:
                return by_channel, text
        default = self.catalog.get(self.settings.default_persona)
        model, model_name = self.models.for_persona(default), model_name_for(self.settings, default)
        return await choose_persona(model, model_name, self.catalog, text, default.name), text

    async def _thread_persona(self, caller_id: str) -> str | None:
        """Who this thread was talking to, from the store: another door replica may have answered it."""
        try:
            persona = await (await self.store()).latest_persona(caller_id)
        except Exception:
            log.warning("could not look up thread %s in the store", caller_id, exc_info=True)
            return None
        if persona is not None:
            self._remember_thread(caller_id, persona)
        return persona

    def _remember_thread(self, caller_id: str, persona: str) -> None:
        self._threads[caller_id] = persona
        self._threads.move_to_end(caller_id)
        while len(self._threads) > THREADS_KEPT:
            self._threads.popitem(last=False)

    async def channel_name(self, app: SlackApp, team: str, channel: str) -> str | None:
        """The channel's name from conversations.info, cached (a failed look-up too, for a while)."""
        key = (team, channel)
        cached = self._names.get(key)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        name: str | None = None
        try:
            info = await app.client.conversations_info(channel=channel)
            name = (info.get("channel") or {}).get("name")
            expires = float("inf")  # a rename is rare; a restart picks it up
        except Exception as exc:
            log.warning("Slack conversations.info for %s failed (%s)", channel, reason(exc))
            expires = time.monotonic() + NAME_TTL_S
        self._names[key] = (name, expires)
        return name

    # --- admin words

    async def _admin(self, word: str, message: SlackMessage) -> str:
        orchestrator = self.gateway.orchestrator
        if word == "help":
            return (
                "Mention me in a channel (or message me directly) and a persona answers in the thread. "
                "Start with a name (`maya: what did we spend?`) to choose who, or talk in `#troupe-<name>`; "
                f"otherwise I pick whoever fits best, else {self.settings.default_persona}. "
                "A thread is one conversation.\nAdmin words: `help`, `agents` (who is here), "
                "`sessions` (open conversations), `clear` (end this thread's conversation, keeping a summary)."
            )
        if word == "agents":
            return "\n".join(f"• *{p.name}* — {p.role}" for p in self.catalog)
        sessions = await orchestrator.list_sessions.remote()
        if word == "sessions":
            if not sessions:
                return "No open sessions."
            lines = [f"• *{s.agent}* with `{s.caller_id}` since {s.started_at:%Y-%m-%d %H:%M} UTC" for s in sessions]
            return f"{len(sessions)} open session(s):\n" + "\n".join(lines)
        # clear: end this thread's session now (summarised into memory) rather than at the idle timeout
        ended = []
        for session in sessions:
            if session.caller_id == message.caller_id:
                await orchestrator.end_session.remote(session.caller_id, session.agent)
                self.gateway.client.forget(session.caller_id, session.agent)
                ended.append(session.agent)
        self._threads.pop(message.caller_id, None)
        if not ended:
            return "Nothing to clear: this thread has no open session."
        return f"Cleared this thread's session with {', '.join(ended)}; a summary was kept."


# An idle thread is summarised into memory without anything here: each turn reports to the orchestrator
# (refreshing the session's last_active), and its housekeeping releases sessions idle for longer than
# session_idle_timeout_s with summarise=True. Only `clear` ends a thread's session early.


async def post_reply(client: AsyncWebClient, channel: str, thread_ts: str, text: str, *, retries: int) -> bool:
    """chat.postMessage in the thread, retried with backoff while Slack is down; logged, never raised."""
    try:
        await send(client, retries=retries, channel=channel, thread_ts=thread_ts, text=text[:MAX_POST_CHARS])
    except OutboundFailed as exc:
        log.error("Slack reply to %s %s", channel, exc)
        return False
    return True


# --- the routes


def _door(request: Request) -> SlackDoor:
    state = request.app.state
    door: SlackDoor | None = getattr(state, "slack", None)
    if door is None:
        door = state.slack = SlackDoor(state.gateway)
    return door


def _error(status: int, message: str, code: str) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse(error_json(message, kind, code), status)


async def _events(request: Request, persona: str | None) -> Response:
    door = _door(request)
    suffix = f"_{persona.upper()}" if persona else ""
    secret, token = door.credentials(persona)
    if not secret:
        return _error(503, f"Slack is not configured: set SLACK_SIGNING_SECRET{suffix}.", "slack_not_configured")
    body = await request.body()
    if len(body) > door.settings.max_body_bytes:
        limit = door.settings.max_body_bytes
        return _error(413, f"Request body is {len(body)} bytes; the limit is {limit}.", "request_too_large")
    headers = request.headers
    app = door.app_for(persona, secret, token)
    if not verified(app.verifier, body, headers.get("x-slack-request-timestamp"), headers.get("x-slack-signature")):
        return _error(401, "Invalid or missing Slack signature, or a stale timestamp.", "invalid_signature")
    if not headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return _error(400, "Request body is not valid JSON.", "invalid_json")
        if not isinstance(payload, dict):
            return _error(400, "Request body must be a JSON object.", "invalid_json")
        if payload.get("type") == "event_callback" and not token:
            return _error(503, f"Slack is not configured: set SLACK_BOT_TOKEN{suffix}.", "slack_not_configured")
    # Bolt answers url_verification and acknowledges events
    return await app.handler.handle(request)


@router.post("/slack/events", include_in_schema=False)
async def slack_events(request: Request) -> Response:
    return await _events(request, None)


@router.post("/slack/events/{persona}", include_in_schema=False)
async def slack_persona_events(persona: str, request: Request) -> Response:
    found = _door(request).catalog.find(persona)
    if found is None:
        return _error(404, f"Unknown persona {persona!r}.", "model_not_found")
    return await _events(request, found.name)
