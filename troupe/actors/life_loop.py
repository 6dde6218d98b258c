"""The life-loop actor: one per persona. It keeps the persona's activity schedule, runs what is due
(once per slot, durably claimed in the store) through the persona actor, and logs every run."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta
from typing import Any

import ray

from troupe.actors.base import ActorBase
from troupe.actors.messages import utcnow
from troupe.actors.persona_file import PersonaCatalog
from troupe.actors.schedule import ACTIVITIES, default_schedule, due, next_slot
from troupe.config.settings import Settings

log = logging.getLogger(__name__)

GRACE = timedelta(minutes=15)

BRIEFS = {
    "news": "Think about what is happening in your field today, given your focus areas. "
    "Write two or three sentences on what caught your eye and why it matters to the company.",
    "goals": "Review your goals for this quarter. Write what is on track, what is at risk, and what you will do next.",
    "team_check": "Check in on your team. Write a short note on how they are doing and what they need from you.",
    "reflection": "Reflect on your recent conversations and work. Write two or three insights worth keeping.",
    "journal": "Write today's journal entry: a few honest lines about your day, in your own voice.",
    "post": "Write a short public post (at most 280 characters) about something you have been thinking about.",
}


@ray.remote(num_cpus=0, max_restarts=0)
class LifeLoopActor(ActorBase):
    def __init__(
        self, settings: Settings, catalog: PersonaCatalog, name: str, process_id: str, orchestrator: Any
    ) -> None:
        super().__init__(settings, catalog)
        self.persona = catalog.get(name)
        self.process_id = process_id
        self.orchestrator = orchestrator
        index = catalog.names().index(self.persona.name)
        self.schedule = {**default_schedule(index), **self.persona.schedule}
        self._runner: asyncio.Task[None] | None = None
        self._busy = asyncio.Lock()

    async def start(self) -> dict[str, Any]:
        await self.store()
        if self.settings.life_loops_enabled and self._runner is None:
            self._runner = asyncio.ensure_future(self._run_forever())
        return await self.ping()

    async def _run_forever(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # a bad tick is logged; the loop keeps living
                log.exception("life tick failed for %s", self.persona.name)
            await asyncio.sleep(self.settings.life_tick_s)

    async def tick(self, now: datetime | None = None) -> list[str]:
        """Run every activity whose slot is due at `now` (default: the real clock). Returns what ran."""
        now = now or utcnow()
        store = await self.store()
        ran: list[str] = []
        for activity, expression in self.schedule.items():
            last = await store.last_life_run(self.persona.name, activity)
            decision = due(
                expression, self.persona.timezone, last_slot=last.slot if last else None, now=now, grace=GRACE
            )
            for slot in decision.skipped:
                if await store.claim_life_slot(self.persona.name, activity, slot):
                    await store.finish_life_run(
                        self.persona.name,
                        activity,
                        slot,
                        status="skipped",
                        output="missed while troupe was down",
                        process_id=None,
                    )
            if decision.run and await store.claim_life_slot(self.persona.name, activity, decision.run):
                await self._perform(activity, decision.run)
                ran.append(activity)
        return ran

    async def trigger(self, activity: str) -> str:
        """Run an activity now, outside its schedule."""
        if activity not in ACTIVITIES:
            raise ValueError(f"Unknown activity {activity!r}; one of {', '.join(ACTIVITIES)}")
        return await self._perform(activity, None)

    async def _perform(self, activity: str, slot: datetime | None) -> str:
        store = await self.store()
        async with self._busy:
            try:
                persona = await self.orchestrator.persona_handle.remote(self.persona.name)
                output = await persona.run_activity.remote(activity, BRIEFS[activity])
                status = "completed"
            except Exception as exc:
                output, status = f"failed: {exc}", "failed"
            await store.finish_life_run(
                self.persona.name, activity, slot, status=status, output=output, process_id=self.process_id
            )
            if status == "completed" and activity == "journal":
                await store.append_journal(self.persona.name, utcnow().date().isoformat(), output)
            return output

    async def schedules(self) -> list[dict[str, Any]]:
        now = utcnow()
        return [
            {
                "persona": self.persona.name,
                "activity": activity,
                "cron_expression": expression,
                "next_trigger_at": next_slot(expression, self.persona.timezone, now),
            }
            for activity, expression in self.schedule.items()
        ]
