"""The persona actor: one per persona, for the life of the service. It answers other personas
(`ask_persona`), writes its life activities and keeps its budget; callers talk to sessions instead."""

from __future__ import annotations

import logging
from typing import Any

import ray

from troupe.actors.agent import AgentLoop, answer_once, budget_guard
from troupe.actors.base import ActorBase
from troupe.actors.models import ModelFactory, model_name_for
from troupe.actors.tools import PersonaTools
from troupe.config.settings import Settings
from troupe.core import extraction, tracing
from troupe.core.caller import channel_of
from troupe.core.chat import ChatMessage, ToolCall
from troupe.core.errors import BudgetExceeded
from troupe.core.messages import Allowance, MetricsDelta
from troupe.core.persona_file import PersonaCatalog
from troupe.core.prompt import PromptContext, build_system_prompt
from troupe.life.digest import life_digest
from troupe.store import SELF

log = logging.getLogger(__name__)


@ray.remote(num_cpus=0, max_restarts=0)
class PersonaActor(ActorBase):
    def __init__(
        self, settings: Settings, catalog: PersonaCatalog, name: str, process_id: str, orchestrator: Any
    ) -> None:
        super().__init__(settings, catalog)
        self.persona = catalog.get(name)
        self.process_id = process_id
        self.orchestrator = orchestrator
        self.models = ModelFactory(settings)
        self.spent = 0.0

    async def start(self, spent: float = 0.0) -> dict[str, Any]:
        self.spent = spent
        await self.store()
        return await self.ping()

    async def _run(
        self, user_text: str, *, subject: str, delegation: bool, extra: str | None = None, tools: bool = True
    ) -> str:
        store = await self.store()
        # what it remembers of this subject (a life activity: its own knowledge, never a caller's facts,
        # which must not reach a public post); an extraction brief carries all it needs
        about = SELF if subject.startswith("life:") else subject
        memories = await store.recall(self.persona.name, subject=about, query=user_text[:500], limit=6) if tools else []
        system, _ = build_system_prompt(
            self.persona,
            PromptContext(
                memories=tuple(m.content for m in memories),
                life_digest=await life_digest(store, self.persona.name),
                client_system=extra,
            ),
            self.catalog,
        )
        toolbox = PersonaTools(
            persona=self.persona.name,
            # consultations may not consult again: two personas must never ask each other forever
            allowed=[t for t in self.persona.tools if tools and (delegation or t in ("remember", "recall"))],
            store=store,
            subject=subject,
            team=self.persona.team,
            delegate=self._delegate if delegation else None,
        )
        loop = AgentLoop(
            speaker=self.persona.name,
            model=self.models.for_persona(self.persona),
            model_name=model_name_for(self.settings, self.persona),
            toolbox=toolbox,
            max_iterations=self.settings.max_tool_iterations,
            temperature=self.persona.temperature,
            budget_guard=budget_guard(
                Allowance(persona=self.persona.name, persona_budget=self.persona.budget_usd, persona_spent=self.spent)
            ),
        )
        try:
            outcome = await answer_once(
                loop,
                (ChatMessage(role="system", content=system), ChatMessage(role="user", content=user_text)),
            )
        except BudgetExceeded:
            await store.record_budget_event("persona", self.persona.name, self.persona.budget_usd, self.spent)
            await self._report(loop.outcome.delta, error="budget exceeded")
            raise
        await self._report(outcome.delta)
        return outcome.text.strip()

    async def _report(self, delta: MetricsDelta, error: str | None = None) -> None:
        try:
            self.spent = await self.orchestrator.report.remote(self.process_id, delta, status="running", error=error)
        except Exception:
            log.warning("metrics report failed", exc_info=True)

    async def _delegate(self, specialist: str, task: str) -> str:
        return await self.orchestrator.spawn_task.remote(self.process_id, specialist, task, trace=tracing.carrier())

    async def ask(self, question: str, asker: str) -> str:
        """Another persona consults this one."""
        return await self._run(
            f"{asker} asks you: {question}\nAnswer them briefly, as yourself.",
            subject=asker,
            delegation=False,
        )

    async def run_activity(self, activity: str, brief: str) -> str:
        """A life-loop activity, written by the persona itself."""
        return await self._run(brief, subject=f"life:{activity}", delegation=activity == "team_check")

    async def remember_conversation(self, caller_id: str, transcript: str, source: str) -> str:
        """A finished conversation (a voice platform's call, a Slack thread, a session let go) goes into
        this persona's memory of the caller: its episode (a summary, with its channel) and the facts the
        persona's model extracts as add / update / delete against what it knew. An update supersedes
        the old fact (kept, with its history); a delete removes it. Returns the summary."""
        text = transcript.strip()[-12_000:]
        if not text:
            return ""
        store = await self.store()
        name = self.persona.name
        known = await store.memories_of(name, caller_id, layer="profile", live=True, limit=60)
        prompt = extraction.brief(
            caller_id, name, [extraction.Known(m.id, m.content, f"{m.created_at:%Y-%m-%d}") for m in known], text
        )
        try:
            reply = await self._run(prompt, subject=caller_id, delegation=False, tools=False)
        except Exception:
            log.warning("extraction by the model failed; keeping an extract", exc_info=True)
            reply = ""
        found = extraction.parse(reply, {m.id for m in known})
        summary = found.summary or f"{caller_id} talked with {name} ({source}): " + text[-400:]
        channel = channel_of(caller_id, source)
        await store.add_memory(name, caller_id, summary, kind="summary", layer="episode", channel=channel,
                               source=source)  # fmt: skip
        for operation in found.operations:
            if operation.op == "delete" and operation.id is not None:
                await store.forget_memory(name, operation.id, subject=caller_id)
            else:
                await store.add_memory(
                    name, caller_id, operation.fact, kind="fact", layer="profile", channel=channel, source=source,
                    importance=operation.importance, supersedes=operation.id,
                )  # fmt: skip
        return summary

    async def summarise_session(self, session_id: str, caller_id: str, source: str = "session") -> str:
        """A conversation a session actor let go (idle, evicted, or ended by the platform): summarised
        into this persona's memory of the caller, and ended in the store. Runs off the caller's path."""
        store = await self.store()
        said = [m for m in await store.load_messages(session_id, limit=60) if m.role in ("user", "assistant")]
        lines = "\n".join(
            f"{'Caller' if m.role == 'user' else self.persona.name}: {m.content}" for m in said if m.content
        )
        summary = await self.remember_conversation(caller_id, lines, source) if lines else ""
        await store.end_session(session_id, summary or None)
        return summary

    async def run_tool(self, caller_id: str, call: ToolCall) -> str:
        """One of this persona's tools run on a platform's behalf (VAPI `tool-calls`), for `caller_id`."""
        toolbox = PersonaTools(
            persona=self.persona.name,
            allowed=self.persona.tools,
            store=await self.store(),
            subject=caller_id,
            team=self.persona.team,
            executives=[p.name for p in self.catalog.executives()],
            delegate=self._delegate,
            consult=self._consult,
            callback=self._callback if self.settings.vapi_api_key else None,
        )
        if call.name not in {spec.name for spec in toolbox.specs()}:
            return f"Error: {self.persona.name} has no tool called {call.name!r}."
        return await toolbox.run(call)

    async def _consult(self, persona: str, question: str) -> str:
        return await self.orchestrator.ask_persona.remote(persona, question, self.persona.name, self.process_id)

    async def _callback(self, number: str, specialist: str, task: str) -> str:
        return await self.orchestrator.schedule_callback.remote(
            self.process_id, self.persona.name, number, specialist, task
        )

    async def describe(self) -> dict[str, Any]:
        return {"name": self.persona.name, "process_id": self.process_id, "spent": self.spent}
