"""The session actor: holds a live conversation while it is live. The conversation itself (identity,
transcript, summary) lives in the store; any pooled actor can pick it up (`bind`), load its window on
the first turn, and let it go again (`detach`). For each turn it hands the door the assembled request in
one call (`prepare`); the door streams from the model itself and hands the finished turn back in one call
(`finish`, idempotent by turn id), so no chunk of a reply crosses an actor boundary."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections import deque
from typing import Any
from uuid import uuid4

import ray
from opentelemetry.trace import SpanKind
from ray.exceptions import ActorDiedError, RayActorError

from troupe.actors.agent import exceeded_scope
from troupe.actors.base import ActorBase
from troupe.actors.models import ModelFactory, model_name_for
from troupe.actors.tools import PersonaTools
from troupe.config.settings import Settings
from troupe.core import tracing
from troupe.core.caller import is_anonymous
from troupe.core.chat import ChatMessage, ToolCall
from troupe.core.errors import BudgetExceeded
from troupe.core.logs import bind_context
from troupe.core.messages import (
    Allowance,
    DoorName,
    Failed,
    MetricsDelta,
    TurnAck,
    TurnPlan,
    TurnRequest,
    TurnResult,
    TurnStats,
)
from troupe.core.persona_file import PersonaCatalog, PersonaDef
from troupe.core.prompt import PromptContext, build_system_prompt, transcript_window
from troupe.life.digest import DigestCache
from troupe.store import Bound

log = logging.getLogger(__name__)

STALE = "stale_session"
REPORT_EVERY_S = 2.0  # how stale a busy session's metrics on the control panel may be (a call each)


DIGESTS = DigestCache()  # each persona's life digest, shared by the sessions this process holds in turn
OPENER_CHECK_S = 2.0  # how often a turn waiting on an unfinished one asks whether that one's door is alive
FINISHED_KEPT = 32  # turn ids remembered as finished, so a retried `finish` is not kept twice
LANE_CONTEXT_S = 2.0  # how stale the persona's own block may be for a caller with no identity
ORPHAN_CHECK_S = 15.0  # how often a session actor asks whether its orchestrator is gone for good


def new_input(messages: tuple[ChatMessage, ...]) -> tuple[tuple[ChatMessage, ...], str | None]:
    """What the client adds this turn: its trailing user/tool messages after the last assistant one,
    plus its system message (voice platforms send one; it becomes extra instructions)."""
    system = next((m.content for m in messages if m.role == "system" and m.content), None)
    tail: list[ChatMessage] = []
    for message in reversed(messages):
        if message.role in ("assistant", "system"):
            break
        tail.append(message)
    return tuple(reversed(tail)), system


def for_session(messages: tuple[ChatMessage, ...], *, one_turn: bool) -> tuple[ChatMessage, ...]:
    """What the door sends `prepare`: an identified caller's session has the history already, so only
    the new input (and the client's system message) travel; a one-turn session has only what the
    client sent, its whole history."""
    if one_turn:
        return messages
    added, system = new_input(messages)
    return ((ChatMessage(role="system", content=system),) if system else ()) + added


async def door_alive(door: DoorName) -> bool:
    """False only when the door replica is known dead; one that does not answer in a moment may be
    busy or on a node Ray has not yet given up on, so it counts as alive. (Looking it up loads its
    class, Ray Serve's, into this process: a cost paid only when a turn is left open.)"""
    try:
        handle = await asyncio.to_thread(ray.get_actor, door.name, namespace=door.namespace)
        await asyncio.wait_for(handle.__ray_ready__.remote(), OPENER_CHECK_S)
    except (RayActorError, ValueError):  # dead, or its name went with it
        return False
    except Exception:
        return True
    return True


@ray.remote(num_cpus=0, max_restarts=0)
class SessionActor(ActorBase):
    """Started detached and named (`session-…`), so a live conversation outlives its orchestrator's
    process: a restarted orchestrator finds its session actors by name and asks each what it `holds`.
    An actor whose orchestrator is gone for good stops itself (see `_outlive_check`)."""

    def __init__(self, settings: Settings, catalog: PersonaCatalog, orchestrator: Any) -> None:
        super().__init__(settings, catalog)
        self.orchestrator = orchestrator
        self.models = ModelFactory(settings)
        self._orphan_check: asyncio.Task[None] | None = None
        self._reset()

    def _reset(self) -> None:
        """Hold nothing: a free actor (lent to a door, it is lent no longer)."""
        self.lane: tuple[str, PersonaDef] | None = None  # lent for one-turn sessions: its lane id, persona
        # what every one-turn session of the lane is shown (the persona's core block, its life digest): read
        # again when older than LANE_CONTEXT_S, so a run of such callers costs one read of it, not one each
        self._lane_context: tuple[float, Bound, tuple[str, ...]] | None = None
        self.process_id: str | None = None
        self.persona_spent = 0.0
        self.finished: deque[str] = deque(maxlen=FINISHED_KEPT)
        self.turn_lock = asyncio.Lock()
        self._background: set[asyncio.Task[Any]] = set()
        # metrics not yet reported to the orchestrator, and what it was last told
        self._unreported = MetricsDelta()
        self._unreported_error: str | None = None
        self._reported_status: str | None = None
        self._report_due: asyncio.Task[Any] | None = None
        self._reset_session()

    def _reset_session(self) -> None:
        """Forget the conversation held. What `_reset` sets lasts across a lent actor's one-turn sessions:
        its process id, the turns it finished, the metrics it has not yet reported."""
        self.caller_id: str | None = None
        self.persona: PersonaDef | None = None
        self.session_id: str | None = None
        self.one_turn = False  # a caller with no identity: this session is one turn long
        self.loaded = False  # the transcript window is read from the store on the first turn
        self.transcript: list[ChatMessage] = []
        self.memories: tuple[str, ...] = ()
        self.blocks: tuple[str, str] = ("", "")  # the core blocks: the persona's about the caller, about itself
        self.digest: tuple[str, ...] = ()
        self.spent = 0.0
        self.tools: PersonaTools | None = None
        self._turn_id: str | None = None
        self._open: asyncio.Future[None] | None = None
        self._opener: DoorName | None = None  # the door replica that opened the turn in flight, if an actor
        self._opening: asyncio.Future[None] | None = None  # the session's row being written
        self._input: tuple[ChatMessage, ...] = ()  # the open turn's input, written with its reply
        self._prompt: tuple[tuple[Any, ...], str, str] | None = None  # (what went in, the prompt, its context)
        self._contexts = 0
        self._context_stale = False
        self._bind_nonce = secrets.token_hex(4)  # a context id is never reused by a later binding
        self.version = 0  # of the transcript: bumped whenever it changes, so a door knows its copy is current

    async def warm(self) -> dict[str, Any]:
        """Connect to the store and import what a turn needs before any caller is waiting on us."""
        store = await self.store()
        # the personas' digests are read now, so no caller's first turn waits for them (nor for a first
        # connection of the thread a bind reads through)
        await asyncio.gather(
            *(self._warm_digest(store, persona.name) for persona in self.catalog.executives()),
            return_exceptions=True,
        )
        import troupe.clients.fake_model
        import troupe.clients.model_endpoint  # noqa: F401

        if self._orphan_check is None:
            self._orphan_check = asyncio.ensure_future(self._outlive_check())
        return await self.ping()

    async def _outlive_check(self) -> None:
        """Stop this process once the orchestrator is gone for good (killed for good, or its driver gone):
        a detached actor would otherwise live on with nobody to hand it a caller. A call in flight when
        the orchestrator died fails though Ray restarts it, so only a second failure, asked after the
        first, counts; a restarting orchestrator holds a new call until it is back."""
        failures = 0
        while True:
            await asyncio.sleep(ORPHAN_CHECK_S if failures == 0 else 2.0)
            try:
                await asyncio.wait_for(self.orchestrator.ping.remote(), ORPHAN_CHECK_S * 2)
                failures = 0
            except ActorDiedError:
                failures += 1
                if failures >= 2:
                    log.warning("the orchestrator is gone for good: this session actor stops")
                    os._exit(0)
            except Exception:  # restarting, busy or unreachable for now: it may well come back
                failures = 0

    def holds(self) -> dict[str, Any] | None:
        """What a restarted orchestrator needs to take this actor back: the conversation it is bound to
        (None when it is free)."""
        if self.lane is not None:
            return {"process_id": self.process_id, "caller_id": self.lane[0], "persona": self.lane[1].name,
                    "session_id": "", "lent": True}  # fmt: skip
        if self.persona is None or self.caller_id is None or self.session_id is None or self.process_id is None:
            return None
        return {"process_id": self.process_id, "caller_id": self.caller_id, "persona": self.persona.name,
                "session_id": self.session_id}  # fmt: skip

    @staticmethod
    async def _warm_digest(store: Any, persona: str) -> None:
        bound = await store.conversation("warm-up", persona)
        await DIGESTS.get(store, persona, bound.life_version)

    async def bind(self, caller_id: str, persona: str, process_id: str, persona_spent: float = 0.0) -> str:
        """Take on a caller: continue their active conversation with this persona, or start one. Only
        reads are on the caller's path (their active session and memories; the persona's digest comes
        from a per-process cache); the session's row is written behind it, before the turn's input. The
        transcript is read on the first turn, so whatever the door wrote meanwhile is in it."""
        self._reset()
        self.process_id = process_id
        self.persona_spent = persona_spent
        definition = self.catalog.get(persona)
        existing = await self._take_on(caller_id, definition, one_turn=False)
        assert self.session_id is not None
        # the session's row (and the caller's) is written while the caller's first turn is prepared
        store = await self.store()
        self._opening = self._spawn(store.open_session(
            self.session_id, caller_id, definition.name, process_id, resumed=existing is not None, identified=True,
        ))  # fmt: skip
        return self.session_id

    async def lend(self, process_id: str, lane: str, persona: str, persona_spent: float = 0.0) -> None:
        """Be lent to one door for one-turn sessions (callers with no identity) of one persona, one after
        another: each `prepare` opens a session of its own and its `finish` keeps it whole and ends it, with
        no call to the orchestrator in between. What they cost is reported as a live session's turns are."""
        await self.store()
        self._reset()
        self.lane = (lane, self.catalog.get(persona))
        self.process_id = process_id
        self.persona_spent = persona_spent

    async def _take_on(
        self, caller_id: str, definition: PersonaDef, one_turn: bool, read: tuple[Bound, tuple[str, ...]] | None = None
    ) -> str | None:
        """Hold a caller's conversation with this persona, and what is always in their prompt (`read`: what
        the store said of it, with the persona's digest, when that is known already). Returns the id of
        their active conversation, which continues (None: a new one starts)."""
        bound, self.digest = read or await self._read(caller_id, definition)
        existing = None if one_turn else bound.session_id  # no identity: no stored conversation, no memories
        self.caller_id, self.persona, self.one_turn = caller_id, definition, one_turn
        self._remembered(bound, one_turn)
        self.session_id = existing or uuid4().hex
        self.loaded = existing is None  # a new conversation: nothing to read
        return existing

    async def _read(self, caller_id: str, definition: PersonaDef) -> tuple[Bound, tuple[str, ...]]:
        """The caller's conversation with this persona as the store has it, and the persona's life digest."""
        store = await self.store()
        bound = await store.conversation(caller_id, definition.name)
        return bound, await DIGESTS.get(store, definition.name, bound.life_version)

    async def _take_one_turn(self, request: TurnRequest) -> Failed | None:
        """A lent actor takes on the one-turn session of a caller with no identity (a refusal if it cannot:
        a caller with an identity or another persona, or the persona's budget spent)."""
        assert self.lane is not None
        definition = self.lane[1]
        if not is_anonymous(request.caller_id) or request.persona.lower() != definition.key:
            return Failed(text="This session has ended.", code=STALE, status=503)
        if self.persona_spent >= definition.budget_usd:
            spent = BudgetExceeded(f"{definition.name} has used the whole ${definition.budget_usd:.2f} budget.")
            return Failed(text=spent.message, code=spent.code, status=spent.status)
        # a one-turn session is shown only what is the persona's (its block, its digest): any caller's read does
        context = self._lane_context
        if context is None or time.monotonic() - context[0] >= LANE_CONTEXT_S:
            context = self._lane_context = (time.monotonic(), *await self._read(request.caller_id, definition))
        await self._take_on(request.caller_id, definition, one_turn=True, read=context[1:])
        return None

    async def _load(self) -> None:
        """The newest window of the transcript: what the model is shown (older turns live on in the
        store and in the persona's memory of the caller)."""
        assert self.session_id is not None
        store = await self.store()
        self.transcript = await store.load_messages(self.session_id, limit=self.settings.history_turns * 2)
        self.loaded = True
        self.version += 1

    def _remembered(self, bound: Bound, one_turn: bool = False) -> None:
        """What is always in this caller's prompt: the core blocks and the newest episodes (the memories
        that bear on a turn's words are recalled by the door, turn by turn)."""
        self.memories = () if one_turn else tuple(bound.episodes)
        self.blocks = ("", bound.persona_block) if one_turn else (bound.caller_block, bound.persona_block)

    async def _refresh_context(self) -> None:
        assert self.persona is not None and self.caller_id is not None
        store = await self.store()
        self._remembered(await store.conversation(self.caller_id, self.persona.name))

    def _allowance(self) -> Allowance:
        persona = self.persona or (self.lane[1] if self.lane is not None else None)
        assert persona is not None
        return Allowance(
            persona=persona.name,
            persona_budget=persona.budget_usd,
            persona_spent=self.persona_spent,
            session_budget=self.settings.session_budget_usd,
            session_spent=self.spent,
        )

    def _toolbox(self, store: Any) -> PersonaTools:
        assert self.persona is not None and self.caller_id is not None
        if self.tools is None:
            self.tools = PersonaTools(
                persona=self.persona.name,
                allowed=self.persona.tools,
                store=store,
                subject=self.caller_id,
                team=self.persona.team,
                executives=[p.name for p in self.catalog.executives()],
                delegate=self._delegate,
                consult=self._consult,
                callback=self._callback if self.settings.vapi_api_key else None,
            )
        return self.tools

    def _system_prompt(self, client_system: str | None) -> tuple[str, str]:
        """Built once per change of what goes into it (memories, life digest, the client's instructions);
        returns it with the id of that context, by which a door keeps its copy."""
        assert self.persona is not None and self.caller_id is not None
        key = (self.memories, self.blocks, self.digest, client_system)
        if self._prompt is None or self._prompt[0] != key or self._context_stale:
            context = PromptContext(
                caller_id=self.caller_id, memories=self.memories, life_digest=self.digest, client_system=client_system,
                caller_block=self.blocks[0], persona_block=self.blocks[1],
            )  # fmt: skip
            self._contexts += 1
            self._context_stale = False
            prompt = build_system_prompt(self.persona, context, self.catalog)[0]
            self._prompt = (key, prompt, f"{self._bind_nonce}:{self._contexts}")
        return self._prompt[1], self._prompt[2]

    async def prepare(self, request: TurnRequest, door: DoorName | None = None) -> TurnPlan | Failed:
        """Open a turn: take the caller's new input into the transcript and hand the door the assembled
        request in one reply. The door streams from the model itself and closes the turn with `finish`,
        which writes the input and the reply in one statement (if this actor dies first, the door writes
        both). Turns of one caller run one at a time. `door`: the door replica opening the turn, when it is
        an actor; if it dies mid-turn, the caller's next turn need not wait for it."""
        attributes = {"troupe.persona": request.persona}
        with tracing.span("session.prepare", parent=request.trace, kind=SpanKind.SERVER, attributes=attributes) as span:
            plan = await self._prepare(request, door)
            if isinstance(plan, Failed):
                tracing.failed(span, plan.code)
            return plan

    async def _prepare(self, request: TurnRequest, door: DoorName | None = None) -> TurnPlan | Failed:
        async with self.turn_lock:
            if self.lane is not None and self.session_id is None and (refused := await self._take_one_turn(request)):
                return refused
            if not self._serves(request):
                # the door held a handle to an actor since released (and perhaps given to someone else)
                return Failed(text="This session has ended.", code=STALE, status=503)
            await self._await_open_turn()
            if not self._serves(request):  # released while this turn waited for the one before
                return Failed(text="This session has ended.", code=STALE, status=503)
            persona, session_id = self.persona, self.session_id
            assert persona is not None and session_id is not None
            if not self.loaded:
                await self._load()
            store = await self.store()
            added, client_system = new_input(request.messages)
            known_version = request.known[1] if request.known is not None else None
            if self.one_turn:
                # no identity, no stored history: the client sent the whole conversation (OpenAI clients do)
                history = [m for m in request.messages if m.role != "system"]
                self.transcript = history[: len(history) - len(added)]
                known_version = None
            if added and self.transcript and self.transcript[-1] == added[-1]:
                added = ()  # a retried request: its input is already in the transcript
            if not added and not (self.transcript and self.transcript[-1].role in ("user", "tool")):
                if self.lane is not None:
                    self._reset_session()  # no turn, so no session: the lane's next caller gets the actor
                return Failed(
                    text="No new user message in the request.",
                    code="invalid_request",
                    status=400,
                )
            turn_id = secrets.token_hex(8)
            bind_context(persona=persona.name, caller=self.caller_id, turn_id=turn_id)  # this call's log lines
            before = self.version
            self._take_input(added)
            system, context = self._system_prompt(client_system)
            tools = self._toolbox(store).specs()
            door_has_context = request.known is not None and request.known[0] == context
            # the door's transcript is this one if it saw its every change, within this context
            door_is_current = door_has_context and known_version == before
            self._turn_id = turn_id
            self._open = asyncio.get_running_loop().create_future()
            self._opener = door
            return TurnPlan(
                turn_id=turn_id,
                session_id=session_id,
                input=added,
                persona=persona.name,
                model_name=model_name_for(self.settings, persona),
                context=context,
                version=self.version,
                system=None if door_has_context else system,
                own_tools=None if door_has_context else tools,
                window=None if door_is_current else transcript_window(self.transcript, self.settings.history_turns),
                temperature=persona.temperature,
                max_iterations=self.settings.max_tool_iterations,
                allowance=self._allowance(),
            )

    def _serves(self, request: TurnRequest) -> bool:
        return (
            self.persona is not None
            and self.session_id is not None
            and request.caller_id == self.caller_id
            and request.persona.lower() == self.persona.key
        )

    async def _await_open_turn(self) -> None:
        """Wait for the turn in flight to be finished. One whose door replica died (with its node, say) is
        given up as soon as Ray knows, and any other after `turn_timeout_s`: its input is kept, and the
        reply the caller may have heard is written by nobody (its door is gone)."""
        if self._open is None or self._open.done():
            return
        deadline = asyncio.get_running_loop().time() + self.settings.turn_timeout_s
        while (left := deadline - asyncio.get_running_loop().time()) > 0:
            try:
                await asyncio.wait_for(asyncio.shield(self._open), min(OPENER_CHECK_S, left))
                return
            except TimeoutError:
                if not await self._opener_alive():
                    break
        log.warning("turn %s of %s was never finished; moving on", self._turn_id, self.process_id)
        await self._write_input()
        self._close_turn()

    async def _opener_alive(self) -> bool:
        return self._opener is None or await door_alive(self._opener)

    def _close_turn(self) -> None:
        if self._open is not None and not self._open.done():
            self._open.set_result(None)
        self._open = None
        self._opener = None
        self._turn_id = None

    async def run_tool(self, turn_id: str, call: ToolCall, trace: tracing.Carrier | None = None) -> str:
        """Run one of the persona's own tools for the turn in flight (they need the store and the company);
        a turn the door built itself is in flight when no prepared one is. `trace`: the door's turn."""
        prepared_elsewhere = self._turn_id is not None and turn_id != self._turn_id
        if prepared_elsewhere or self.tools is None or turn_id in self.finished:
            return "Error: this turn has ended."
        with tracing.within(trace):
            return await self.tools.run(call)

    async def finish(self, result: TurnResult) -> TurnAck | None:
        """Close a turn: keep its input and reply in the transcript and the store, count what it cost.
        Idempotent by turn id: a retried finish is not kept twice. None: this actor does not hold that
        turn (it was restarted or rebound); the door then keeps the turn through the store itself.

        A turn the door built from its copy of this session (`base_version` set) was never prepared: it
        is kept if this actor still holds its session. Built on an older transcript (another door's turn
        came in between), it is kept all the same, since the caller heard it, and the ack tells the door
        its copy is behind."""
        with tracing.span("session.finish", parent=result.trace, kind=SpanKind.SERVER):
            return await self._finish(result)

    async def _finish(self, result: TurnResult) -> TurnAck | None:
        bind_context(persona=getattr(self.persona, "name", None), caller=self.caller_id, turn_id=result.turn_id)
        if result.turn_id in self.finished:
            return self._ack()
        if result.base_version is not None:
            return await self._finish_built(result)
        if result.turn_id != self._turn_id:
            return None
        try:
            await self._settled()
            await self._keep(result)
            self.finished.append(result.turn_id)
            ack = self._ack()
        finally:
            self._close_turn()
            if self.lane is not None:
                self._reset_session()  # its one turn is over, kept or not: the lane's next caller can come
        log.info("turn kept", extra={"event": "turn.kept"})
        return ack

    async def _finish_built(self, result: TurnResult) -> TurnAck | None:
        async with self.turn_lock:
            await self._await_open_turn()
            if self.one_turn or self.session_id is None or result.session_id != self.session_id:
                return None
            if not self.loaded:
                await self._load()
            behind = result.base_version != self.version
            self._take_input(result.input)
            self._turn_id = result.turn_id
            try:
                await self._settled()
                await self._keep(result)
                self.finished.append(result.turn_id)
            finally:
                self._turn_id = None
            return self._ack(behind=behind)

    def _ack(self, *, behind: bool = False) -> TurnAck:
        context = self._prompt[2] if self._prompt is not None and not self._context_stale else ""
        return TurnAck(version=self.version, context=context, allowance=self._allowance(), behind=behind)

    def _take_input(self, added: tuple[ChatMessage, ...]) -> None:
        """The turn's input goes into the transcript now, and into the store with its reply."""
        if added:
            self.transcript.extend(added)
            self.version += 1
        self._input = added

    async def _settled(self) -> None:
        """The session's row is in the store (written behind a new conversation's first bind)."""
        opening, self._opening = self._opening, None
        if opening is not None:
            await opening

    async def _write_input(self) -> None:
        """The open turn's input alone, for a turn that is never finished."""
        added, self._input = self._input, ()
        if added and self.session_id is not None and self._turn_id is not None:
            await self._settled()
            await self._write(added, turn_id=self._turn_id)

    async def _write(
        self, messages: tuple[ChatMessage, ...], *, turn_id: str, interrupted: bool = False, reply_from: int = 0,
        stats: TurnStats | None = None,
    ) -> None:  # fmt: skip
        assert self.session_id is not None and self.persona is not None and self.caller_id is not None
        store = await self.store()
        if self.one_turn:  # the whole conversation, in the same one write
            await store.keep_one_turn(
                self.session_id, self.caller_id, self.persona.name, self.process_id or "", messages,
                turn_id=turn_id, interrupted=interrupted, reply_from=reply_from, stats=stats,
            )  # fmt: skip
        else:
            await store.append_messages(
                self.session_id, messages, turn_id=turn_id, interrupted=interrupted, reply_from=reply_from,
                stats=stats,
            )  # fmt: skip

    async def _keep(self, result: TurnResult) -> None:
        assert self.session_id is not None and self.persona is not None
        allowance = self._allowance()
        added, self._input = self._input, ()
        # the turn in one write: the caller's input, the reply and the turn's figures
        await self._write(
            added + result.new_messages, turn_id=result.turn_id, interrupted=result.interrupted,
            reply_from=len(added), stats=TurnStats.of(result, self.persona.name),
        )  # fmt: skip
        if result.new_messages:
            self.transcript.extend(result.new_messages)
            self.version += 1
        # a live session keeps only a window in memory; the whole conversation is in the store
        keep = self.settings.history_turns * 4
        if len(self.transcript) > keep:
            del self.transcript[:-keep]
        self.spent += result.delta.cost_usd
        if result.error_code == BudgetExceeded.code:
            store = await self.store()
            if exceeded_scope(allowance, result.delta.cost_usd) == "session":
                scope, subject, limit = "session", f"{self.persona.name}:{self.caller_id}", allowance.session_budget
            else:
                scope, subject, limit = "persona", self.persona.name, self.persona.budget_usd
            await store.record_budget_event(scope, subject, limit, self.spent)
        self._report(result.delta, result.error_text)
        if any(call.name in ("remember", "forget") for m in result.new_messages for call in m.tool_calls):
            self._context_stale = True  # a door's copy of the prompt must not outlive these memories
            self._spawn(self._refresh_context())

    def _report(self, delta: MetricsDelta, error: str | None) -> None:
        """Tell the orchestrator what a turn cost. A change of status (a failure, a recovery, the first
        turn) goes at once; otherwise turns are summed and sent at most every REPORT_EVERY_S, so a busy
        caller costs the orchestrator one call per interval instead of one per turn (a call costs ~2 ms
        of CPU between the two processes on the reference machine)."""
        self._unreported = self._unreported.plus(delta)
        self._unreported_error = error
        status = "failed" if error is not None else "running"
        if status != self._reported_status:
            self._spawn(self._send_report())
        elif self._report_due is None:
            self._report_due = self._spawn(self._report_later())

    async def _report_later(self) -> None:
        await asyncio.sleep(REPORT_EVERY_S)
        self._report_due = None
        await self._send_report()

    async def _send_report(self) -> None:
        delta, error = self._unreported, self._unreported_error
        if self.process_id is None or (delta == MetricsDelta() and self._reported_status is not None):
            return
        self._unreported, self._unreported_error = MetricsDelta(), None
        status = "failed" if error is not None else "running"
        self._reported_status = status
        ref = self.orchestrator.report.remote(self.process_id, delta, status=status, error=error)
        try:
            self.persona_spent = await ref
        except Exception:  # the orchestrator restarting must not break a caller's turn
            log.warning("metrics report failed", exc_info=True)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _delegate(self, specialist: str, task: str) -> str:
        return await self.orchestrator.spawn_task.remote(self.process_id, specialist, task, trace=tracing.carrier())

    async def _consult(self, persona: str, question: str) -> str:
        assert self.persona is not None
        return await self.orchestrator.ask_persona.remote(persona, question, self.persona.name, self.process_id)

    async def _callback(self, number: str, specialist: str, task: str) -> str:
        assert self.persona is not None
        return await self.orchestrator.schedule_callback.remote(
            self.process_id, self.persona.name, number, specialist, task
        )

    async def detach(self) -> dict[str, str] | None:
        """Let the conversation go (it lives on in the store): wait for a turn in flight, settle the
        writes, report the metrics, and unbind. Returns what the persona needs to summarise it (off the
        caller's path); None for an actor lent for one-turn sessions, whose lending ends."""
        if self.lane is not None:
            async with self.turn_lock:
                await self._await_open_turn()
                await self._send_report()
                self._reset()
            return None
        if self.persona is None or self.session_id is None or self.caller_id is None:
            return None
        async with self.turn_lock:
            await self._await_open_turn()
            await self._settled()
            await self._send_report()
            held = {"session_id": self.session_id, "caller_id": self.caller_id, "persona": self.persona.name}
            self._reset()
            return held

    def busy(self) -> bool:
        """A turn is open (prepared, not yet finished)."""
        return self._open is not None and not self._open.done()

    async def describe(self) -> dict[str, Any]:
        return {
            "caller_id": self.caller_id,
            "persona": self.persona.name if self.persona else None,
            "session_id": self.session_id,
            "messages": len(self.transcript),
            "spent": self.spent,
        }
