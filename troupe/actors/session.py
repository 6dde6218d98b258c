"""The session actor: one per active caller. It holds the durable conversation, runs the persona's
agent loop for each turn and streams the reply; metrics go to the orchestrator off the hot path."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import ray

from troupe.actors.agent import AgentLoop, Outcome
from troupe.actors.base import ActorBase
from troupe.actors.messages import MetricsDelta, TurnEvent, TurnRequest
from troupe.actors.models import ModelFactory, model_name_for
from troupe.actors.persona_file import PersonaCatalog, PersonaDef
from troupe.actors.prompt import PromptContext, build_system_prompt, transcript_window
from troupe.actors.tools import PersonaTools
from troupe.chat_model import ChatMessage, ModelRequest, complete
from troupe.config.settings import Settings
from troupe.errors import BudgetExceeded, TroupeError

log = logging.getLogger(__name__)

STALE = "stale_session"


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


def fallback_summary(persona: str, caller_id: str, transcript: list[ChatMessage]) -> str:
    said = [m.content for m in transcript if m.role == "user" and m.content]
    if not said:
        return ""
    return f"{caller_id} talked with {persona}; they said: " + " / ".join(s[:160] for s in said[-5:])


@ray.remote(num_cpus=0, max_restarts=0)
class SessionActor(ActorBase):
    def __init__(self, settings: Settings, catalog: PersonaCatalog, orchestrator: Any) -> None:
        super().__init__(settings, catalog)
        self.orchestrator = orchestrator
        self.models = ModelFactory(settings)
        self._reset()

    def _reset(self) -> None:
        self.caller_id: str | None = None
        self.persona: PersonaDef | None = None
        self.process_id: str | None = None
        self.session_id: str | None = None
        self.transcript: list[ChatMessage] = []
        self.memories: tuple[str, ...] = ()
        self.digest: tuple[str, ...] = ()
        self.spent = 0.0
        self.persona_spent = 0.0
        self.turn_lock = asyncio.Lock()
        self._background: set[asyncio.Task[Any]] = set()

    async def warm(self) -> dict[str, Any]:
        """Connect to the store and import what a turn needs before any caller is waiting on us."""
        await self.store()
        import troupe.integrations.fake_model
        import troupe.integrations.model_endpoint  # noqa: F401

        return await self.ping()

    async def bind(self, caller_id: str, persona: str, process_id: str, persona_spent: float = 0.0) -> str:
        """Take on a caller: continue their active conversation with this persona, or start one."""
        store = await self.store()
        self.caller_id = caller_id
        self.persona = self.catalog.get(persona)
        self.process_id = process_id
        self.persona_spent = persona_spent
        await store.upsert_caller(caller_id, phone=caller_id if caller_id.startswith("+") else None)
        existing = await store.active_session(caller_id, self.persona.name)
        if existing is not None:
            self.session_id = existing.id
            await store.set_session_process(existing.id, process_id)
            self.transcript = await store.load_messages(existing.id)
        else:
            created = await store.create_session(caller_id, self.persona.name, process_id)
            self.session_id = created.id
            self.transcript = []
        await self._refresh_context()
        return self.session_id

    async def _refresh_context(self) -> None:
        assert self.persona is not None and self.caller_id is not None
        store = await self.store()
        remembered = await store.recall(self.persona.name, subject=self.caller_id, limit=8)
        self.memories = tuple(entry.content for entry in remembered)
        runs = await store.life_runs(self.persona.name, limit=6)
        self.digest = tuple(f"{run.activity}: {run.output}" for run in runs if run.output and run.status == "completed")

    def _budget_guard(self, spent_this_turn: float) -> None:
        assert self.persona is not None
        if self.spent + spent_this_turn >= self.settings.session_budget_usd > 0:
            raise BudgetExceeded(
                f"This session has spent ${self.spent:.4f} of its ${self.settings.session_budget_usd:.2f} budget."
            )
        if self.persona_spent + spent_this_turn >= self.persona.budget_usd:
            raise BudgetExceeded(
                f"{self.persona.name} has spent ${self.persona_spent:.4f} of a ${self.persona.budget_usd:.2f} budget."
            )

    async def turn(self, request: TurnRequest) -> AsyncIterator[list[TurnEvent]]:
        """Stream one turn's reply as batches of events: whatever is ready together travels as one Ray
        object (a chunk is one transfer). Ends with exactly one `done` or `error` event."""
        if (
            self.persona is None
            or self.session_id is None
            or request.caller_id != self.caller_id
            or request.persona.lower() != self.persona.key
        ):
            # the door held a handle to an actor since released (and perhaps given to someone else)
            yield [TurnEvent(kind="error", text="This session has ended.", error_code=STALE, error_status=503)]
            return
        async with self.turn_lock:  # one turn at a time per caller keeps the transcript in order
            queue: asyncio.Queue[TurnEvent | None] = asyncio.Queue()

            async def produce() -> None:
                try:
                    async for event in self._turn(request):
                        queue.put_nowait(event)
                finally:
                    queue.put_nowait(None)

            producer = asyncio.ensure_future(produce())
            try:
                finished = False
                while not finished:
                    batch: list[TurnEvent] = []
                    item = await queue.get()
                    while item is not None:
                        batch.append(item)
                        if queue.empty():
                            break
                        item = queue.get_nowait()
                    finished = item is None
                    if batch:
                        yield batch
                await producer
            finally:
                if not producer.done():
                    producer.cancel()

    async def _turn(self, request: TurnRequest) -> AsyncIterator[TurnEvent]:
        assert self.persona is not None and self.session_id is not None and self.caller_id is not None
        persona = self.persona
        store = await self.store()
        added, client_system = new_input(request.messages)
        if added and self.transcript and self.transcript[-1] == added[-1]:
            added = ()  # a retried request: its input is already in the transcript
        if not added and not (self.transcript and self.transcript[-1].role in ("user", "tool")):
            yield TurnEvent(
                kind="error",
                text="No new user message in the request.",
                error_code="invalid_request",
                error_status=400,
            )
            return
        persisted = None
        if added:
            # written while the model thinks (off the time to first token), and always before the turn ends
            persisted = asyncio.ensure_future(store.append_messages(self.session_id, added))
            self.transcript.extend(added)
        system, _report = build_system_prompt(
            persona,
            PromptContext(
                caller_id=self.caller_id,
                memories=self.memories,
                life_digest=self.digest,
                client_system=client_system,
            ),
            self.catalog,
        )
        history = transcript_window(self.transcript, self.settings.history_turns)
        toolbox = PersonaTools(
            persona=persona.name,
            allowed=persona.tools,
            store=store,
            subject=self.caller_id,
            team=persona.team,
            executives=[p.name for p in self.catalog.executives()],
            delegate=self._delegate,
            consult=self._consult,
        )
        loop = AgentLoop(
            speaker=persona.name,
            model=self.models.for_persona(persona),
            model_name=model_name_for(self.settings, persona),
            toolbox=toolbox,
            max_iterations=self.settings.max_tool_iterations,
            temperature=persona.temperature,
            budget_guard=self._budget_guard,
        )
        try:
            async for event in loop.run(
                (ChatMessage(role="system", content=system), *history),
                client_tools=request.client_tools,
                temperature=request.temperature,
                max_tokens=request.max_tokens,
                stop=request.stop,
            ):
                yield event
        except TroupeError as exc:
            await self._settle(persisted)
            await self._finish(loop.outcome, failed=exc)
            yield TurnEvent(kind="error", text=exc.message, error_code=exc.code, error_status=exc.status)
            return
        except Exception as exc:  # never leave a caller hanging on an unexpected fault
            log.exception("turn failed")
            await self._settle(persisted)
            await self._finish(loop.outcome, failed=exc)
            yield TurnEvent(
                kind="error",
                text="The persona failed to answer.",
                error_code="internal_error",
                error_status=500,
            )
            return
        await self._settle(persisted)
        await self._finish(loop.outcome)

    @staticmethod
    async def _settle(persisted: asyncio.Future[int] | None) -> None:
        if persisted is not None:
            await persisted

    async def _finish(self, outcome: Outcome, failed: Exception | None = None) -> None:
        assert self.session_id is not None and self.persona is not None
        if outcome.new_messages:
            store = await self.store()
            await store.append_messages(self.session_id, outcome.new_messages)
            self.transcript.extend(outcome.new_messages)
        self.spent += outcome.delta.cost_usd
        if isinstance(failed, BudgetExceeded):
            store = await self.store()
            if failed.message.startswith("This session"):
                scope, subject, limit = (
                    "session",
                    f"{self.persona.name}:{self.caller_id}",
                    self.settings.session_budget_usd,
                )
            else:
                scope, subject, limit = "persona", self.persona.name, self.persona.budget_usd
            await store.record_budget_event(scope, subject, limit, self.spent)
        self._report(outcome.delta, failed)
        if any(call.name == "remember" for m in outcome.new_messages for call in m.tool_calls):
            self._spawn(self._refresh_context())

    def _report(self, delta: MetricsDelta, failed: Exception | None) -> None:
        status = "failed" if failed is not None else "running"
        error = str(failed) if failed is not None else None
        ref = self.orchestrator.report.remote(self.process_id, delta, status=status, error=error)
        self._spawn(self._take_spend(ref))

    async def _take_spend(self, ref: Any) -> None:
        try:
            self.persona_spent = await ref
        except Exception:  # the orchestrator restarting must not break a caller's turn
            log.warning("metrics report failed", exc_info=True)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _delegate(self, specialist: str, task: str) -> str:
        return await self.orchestrator.spawn_task.remote(self.process_id, specialist, task)

    async def _consult(self, persona: str, question: str) -> str:
        assert self.persona is not None
        return await self.orchestrator.ask_persona.remote(persona, question, self.persona.name, self.process_id)

    async def release(self) -> str | None:
        """End the conversation: summarise it into the persona's memory of this caller, then unbind."""
        if self.persona is None or self.session_id is None or self.caller_id is None:
            return None
        async with self.turn_lock:
            summary = await self._summarise()
            store = await self.store()
            if summary:
                await store.add_memory(self.persona.name, self.caller_id, summary, kind="summary", source="session")
            await store.end_session(self.session_id, summary)
            self._reset()
            return summary

    async def _summarise(self) -> str:
        assert self.persona is not None and self.caller_id is not None
        said = [m for m in self.transcript if m.role in ("user", "assistant") and m.content]
        if not said:
            return ""
        lines = "\n".join(f"{'Caller' if m.role == 'user' else self.persona.name}: {m.content}" for m in said[-30:])
        request = ModelRequest(
            messages=(
                ChatMessage(
                    role="system",
                    content=f"You are {self.persona.name}. Summarise conversations for your own memory.",
                ),
                ChatMessage(
                    role="user",
                    content=f"Summarise this conversation with {self.caller_id} in two or three sentences: "
                    f"who they are, what they wanted, what you promised.\n\n{lines}",
                ),
            ),
            model=model_name_for(self.settings, self.persona),
            speaker=self.persona.name,
            max_tokens=160,
        )
        try:
            result = await complete(self.models.for_persona(self.persona), request)
            text = result.content.strip()
        except Exception:
            log.warning("summary by the model failed; keeping an extract", exc_info=True)
            text = ""
        return text or fallback_summary(self.persona.name, self.caller_id, said)

    async def describe(self) -> dict[str, Any]:
        return {
            "caller_id": self.caller_id,
            "persona": self.persona.name if self.persona else None,
            "session_id": self.session_id,
            "messages": len(self.transcript),
            "spent": self.spent,
        }
