"""A delegated task: a specialist working on one piece of work as a child process of the persona
that spawned it, until it answers or fails."""

from __future__ import annotations

from typing import Any

import ray

from troupe.actors.agent import AgentLoop, answer_once
from troupe.actors.base import ActorBase
from troupe.actors.messages import MetricsDelta
from troupe.actors.models import ModelFactory, model_name_for
from troupe.actors.persona_file import PersonaCatalog
from troupe.actors.prompt import PromptContext, build_system_prompt
from troupe.actors.tools import PersonaTools
from troupe.chat_model import ChatMessage
from troupe.config.settings import Settings
from troupe.errors import BudgetExceeded


@ray.remote(num_cpus=0, max_restarts=0)
class TaskActor(ActorBase):
    def __init__(self, settings: Settings, catalog: PersonaCatalog, specialist: str, spent: float) -> None:
        super().__init__(settings, catalog)
        self.persona = catalog.get(specialist)
        self.spent = spent

    def _guard(self, spent_now: float) -> None:
        if self.spent + spent_now >= self.persona.budget_usd:
            raise BudgetExceeded(
                f"{self.persona.name} has spent ${self.spent:.4f} of a ${self.persona.budget_usd:.2f} budget."
            )

    async def run(self, task: str, requested_by: str) -> tuple[str, MetricsDelta]:
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
            budget_guard=self._guard,
        )
        prompt = f"{requested_by} has delegated this task to you:\n{task}\n\nDo it and report the result concisely."
        outcome = await answer_once(
            loop, (ChatMessage(role="system", content=system), ChatMessage(role="user", content=prompt))
        )
        return outcome.text.strip(), outcome.delta

    async def describe(self) -> dict[str, Any]:
        return {"name": self.persona.name}
