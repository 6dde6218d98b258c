"""A delegated task: a specialist working on one piece of work as a child process of the persona
that spawned it, until it answers or fails."""

from __future__ import annotations

from typing import Any

import ray
from opentelemetry.trace import SpanKind

from troupe.actors.agent import AgentLoop, answer_once, budget_guard
from troupe.actors.base import ActorBase
from troupe.actors.models import ModelFactory, model_name_for
from troupe.actors.tools import PersonaTools
from troupe.clients import tracing as exporting
from troupe.config.settings import Settings
from troupe.core import tracing
from troupe.core.chat import ChatMessage
from troupe.core.messages import Allowance, MetricsDelta
from troupe.core.persona_file import PersonaCatalog
from troupe.core.prompt import PromptContext, build_system_prompt


@ray.remote(num_cpus=0, max_restarts=0)
class TaskActor(ActorBase):
    def __init__(self, settings: Settings, catalog: PersonaCatalog, specialist: str, spent: float) -> None:
        super().__init__(settings, catalog)
        self.persona = catalog.get(specialist)
        self.spent = spent

    async def run(self, task: str, requested_by: str, trace: tracing.Carrier | None = None) -> tuple[str, MetricsDelta]:
        """Do the task; `trace` is the W3C trace context of the tool call that delegated it."""
        attributes = {"troupe.persona": self.persona.name, "troupe.requested_by": requested_by}
        try:
            with tracing.span("task.run", parent=trace, kind=SpanKind.SERVER, attributes=attributes):
                return await self._run(task, requested_by)
        finally:
            await exporting.flush()  # the orchestrator kills this process as soon as it answers

    async def _run(self, task: str, requested_by: str) -> tuple[str, MetricsDelta]:
        store = await self.store()
        memories = await store.recall(self.persona.name, query=task, limit=5)
        system, _ = build_system_prompt(
            self.persona, PromptContext(memories=tuple(m.content for m in memories)), self.catalog
        )
        loop = AgentLoop(
            speaker=self.persona.name,
            model=ModelFactory(self.settings).for_persona(self.persona),
            model_name=model_name_for(self.settings, self.persona),
            toolbox=PersonaTools(
                persona=self.persona.name,
                allowed=[t for t in self.persona.tools if t in ("remember", "recall")],
                store=store,
                subject=requested_by,
            ),
            max_iterations=self.settings.max_tool_iterations,
            temperature=self.persona.temperature,
            budget_guard=budget_guard(
                Allowance(persona=self.persona.name, persona_budget=self.persona.budget_usd, persona_spent=self.spent)
            ),
        )
        prompt = f"{requested_by} has delegated this task to you:\n{task}\n\nDo it and report the result concisely."
        outcome = await answer_once(
            loop, (ChatMessage(role="system", content=system), ChatMessage(role="user", content=prompt))
        )
        return outcome.text.strip(), outcome.delta

    async def describe(self) -> dict[str, Any]:
        return {"name": self.persona.name}
