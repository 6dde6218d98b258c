"""The life-loop actor: one per executive. It keeps the persona's activity schedule, runs what is due
(once per slot, durably claimed in the store) as a supervised process, and logs every run. The persona
writes every activity itself through its model; this actor gathers what it writes about (feeds, goals,
its team's processes, its own recent life) and keeps what comes out (takes, journal, insights, posts)."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import ray

from troupe.actors.base import ActorBase
from troupe.clients.outbound import OutboundFailed
from troupe.config.settings import Settings, split_list
from troupe.core.errors import ConfigError
from troupe.core.persona_file import PersonaCatalog
from troupe.core.schedule import ACTIVITIES, default_schedule, describe, due, next_slot, validate
from troupe.life import goals as goals_file
from troupe.life import news, posts
from troupe.life.clock import Clock
from troupe.life.consolidation import consolidate
from troupe.life.digest import AT_RISK
from troupe.store import SELF, LifeRunRecord, ScheduleOverride

log = logging.getLogger(__name__)

REFLECTION_GAP = timedelta(hours=1)  # the least time between two reflections prompted by events
VOICE = "Write in your own voice, as yourself, in plain sentences; no lists, no markdown."


class ActivityFailed(Exception):
    """An activity could not do its work; the message says why (it is the run's logged output)."""


def schedule_id(persona_key: str, activity: str) -> str:
    return f"{persona_key}.{activity}"


@ray.remote(num_cpus=0, max_restarts=0)
class LifeLoopActor(ActorBase):
    def __init__(
        self, settings: Settings, catalog: PersonaCatalog, name: str, process_id: str, orchestrator: Any
    ) -> None:
        super().__init__(settings, catalog)
        self.persona = catalog.get(name)
        self.process_id = process_id
        self.orchestrator = orchestrator
        self.clock = Clock.of(settings)
        self.grace = timedelta(seconds=settings.life_grace_s)
        index = catalog.names().index(self.persona.name)
        self.defaults = {**default_schedule(index), **self.persona.schedule}
        self.overrides: dict[str, ScheduleOverride] = {}
        self._runner: asyncio.Task[None] | None = None
        self._busy = asyncio.Lock()

    async def start(self) -> dict[str, Any]:
        store = await self.store()
        self.overrides = {o.activity: o for o in await store.schedule_overrides(self.persona.name)}
        if self.settings.life_loops_enabled and self._runner is None:
            self._runner = asyncio.ensure_future(self._run_forever())
        return await self.ping()

    def expression(self, activity: str) -> str:
        override = self.overrides.get(activity)
        return (override.cron_expression if override else None) or self.defaults[activity]

    def paused(self, activity: str) -> bool:
        override = self.overrides.get(activity)
        return bool(override and override.is_paused)

    async def _run_forever(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # a bad tick is logged; the loop keeps living
                log.exception("life tick failed for %s", self.persona.name)
            try:
                await self.deliver_pending()
            except Exception:
                log.exception("post delivery failed for %s", self.persona.name)
            await asyncio.sleep(self.settings.life_tick_s)

    # ------------------------------------------------------------------ the schedule

    async def tick(self, now: datetime | None = None) -> list[str]:
        """Run every activity whose slot is due at `now` (default: the life clock). Returns what ran."""
        now = now or self.clock.now()
        store = await self.store()
        ran: list[str] = []
        for activity in ACTIVITIES:
            if self.paused(activity):
                continue
            last = await store.last_life_run(self.persona.name, activity)
            decision = due(
                self.expression(activity),
                self.persona.timezone,
                last_slot=last.slot if last else None,
                now=now,
                grace=self.grace,
            )
            for slot in decision.skipped:
                if await store.claim_life_slot(self.persona.name, activity, slot, at=now):
                    log.info("%s %s slot %s skipped: missed beyond the grace period", self.persona.name, activity, slot)
                    await store.finish_life_run(
                        self.persona.name, activity, slot, status="skipped", at=now, process_id=None,
                        output=f"Missed while troupe was down (slot {slot.isoformat()}, more than "
                        f"{int(self.grace.total_seconds() // 60)} min late).",
                    )  # fmt: skip
            if decision.run and await store.claim_life_slot(self.persona.name, activity, decision.run, at=now):
                await self._perform(activity, decision.run, now)
                ran.append(activity)
        if not self.paused("reflection") and await self._eventful(now):
            slot = now.replace(second=0, microsecond=0)
            if await store.claim_life_slot(self.persona.name, "reflection", slot, at=now):
                await self._perform("reflection", slot, now)
                ran.append("reflection")
        return ran

    async def _eventful(self, now: datetime) -> bool:
        """Has enough happened since the last reflection to reflect now, before its scheduled hour?"""
        store = await self.store()
        last = await store.life_runs(self.persona.name, "reflection", limit=1)
        since = last[0].triggered_at if last else now - timedelta(days=1)
        if last and now - since < REFLECTION_GAP:
            return False
        runs = await store.life_runs(self.persona.name, limit=50, since=since)
        lived = sum(1 for r in runs if r.status == "completed" and r.activity != "reflection")
        read = sum(1 for item in await store.news_read(self.persona.name, limit=50) if item.read_at >= since)
        real_since = (last[0].finished_at or last[0].triggered_at) if last else since
        talked = await store.count_user_turns(self.persona.name, real_since)
        return lived + read + talked >= self.settings.reflection_threshold

    async def trigger(self, activity: str) -> str:
        """Run an activity now, outside its schedule (the operator's button, `troupe trigger`)."""
        if activity not in ACTIVITIES:
            raise ValueError(f"Unknown activity {activity!r}; one of {', '.join(ACTIVITIES)}")
        return await self._perform(activity, None, self.clock.now())

    async def schedules(self) -> list[dict[str, Any]]:
        store = await self.store()
        now = self.clock.now()
        out = []
        for activity in ACTIVITIES:
            expression = self.expression(activity)
            last = await store.life_runs(self.persona.name, activity, limit=1)
            paused = self.paused(activity)
            out.append(
                {
                    "id": schedule_id(self.persona.key, activity),
                    "persona": self.persona.name,
                    "activity": activity,
                    "cron_expression": expression,
                    "cron_human": describe(expression, self.persona.timezone),
                    "timezone": self.persona.timezone,
                    "next_trigger_at": None if paused else next_slot(expression, self.persona.timezone, now),
                    "last_triggered_at": last[0].triggered_at if last else None,
                    "last_status": last[0].status if last else None,
                    "is_paused": paused,
                    "is_default": activity not in self.overrides or not self.overrides[activity].cron_expression,
                }
            )
        return out

    async def update_schedule(
        self, activity: str, *, cron_expression: str | None = None, is_paused: bool | None = None
    ) -> dict[str, Any]:
        """Pause, resume or re-time one activity (kept in the store: a restart keeps the change)."""
        if activity not in ACTIVITIES:
            raise ValueError(f"Unknown activity {activity!r}; one of {', '.join(ACTIVITIES)}")
        if cron_expression is not None:
            cron_expression = " ".join(cron_expression.split())
            problem = validate(cron_expression)
            if problem:
                raise ValueError(problem)
        store = await self.store()
        self.overrides[activity] = await store.set_schedule(
            self.persona.name, activity, cron_expression=cron_expression, is_paused=is_paused
        )
        return next(s for s in await self.schedules() if s["activity"] == activity)

    async def executions(self, activity: str, limit: int = 50) -> list[LifeRunRecord]:
        store = await self.store()
        return await store.life_runs(self.persona.name, activity, limit=limit)

    # ------------------------------------------------------------------ one run

    async def _perform(self, activity: str, slot: datetime | None, now: datetime) -> str:
        store = await self.store()
        async with self._busy:
            pid = await self._started(activity)
            began = time.perf_counter()
            try:
                output = await getattr(self, f"_{activity}")(now)
                status, error = "completed", None
            except (ActivityFailed, ConfigError) as exc:
                output, status, error = f"Failed: {exc}", "failed", str(exc)
            except Exception as exc:
                log.exception("%s's %s failed", self.persona.name, activity)
                output, status, error = f"Failed: {type(exc).__name__}: {exc}", "failed", type(exc).__name__
            await store.finish_life_run(
                self.persona.name, activity, slot, status=status, output=output, process_id=pid or self.process_id,
                at=now,
            )  # fmt: skip
            await self._finished(pid, activity, status, error, time.perf_counter() - began)
            return output

    async def _started(self, activity: str) -> str | None:
        try:
            pid: str = await self.orchestrator.life_started.remote(self.process_id, self.persona.name, activity)
            return pid
        except Exception:
            log.warning("could not register %s's %s with the orchestrator", self.persona.name, activity)
            return None

    async def _finished(self, pid: str | None, activity: str, status: str, error: str | None, seconds: float) -> None:
        try:
            await self.orchestrator.life_finished.remote(pid, self.persona.name, activity, status, error, seconds)
        except Exception:
            log.warning("could not report %s's %s to the orchestrator", self.persona.name, activity)

    async def _write(self, activity: str, brief: str) -> str:
        """The persona writes it, through its own model, prompt, budget and tools."""
        persona = await self.orchestrator.persona_handle.remote(self.persona.name)
        text: str = await persona.run_activity.remote(activity, brief)
        if not text.strip():
            raise ActivityFailed("the model wrote nothing")
        return text.strip()

    def _local(self, now: datetime) -> datetime:
        return now.astimezone(ZoneInfo(self.persona.timezone))

    # ------------------------------------------------------------------ the activities

    async def _news(self, now: datetime) -> str:
        sources = self.persona.news_sources or split_list(self.settings.news_sources)
        if not sources:
            raise ActivityFailed("no news sources configured (news_sources in the persona file, TROUPE_NEWS_SOURCES)")
        async with httpx.AsyncClient(follow_redirects=True, headers={"User-Agent": "troupe-life/1"}) as client:
            items, failures = await news.fetch_all(client, sources, timeout_s=self.settings.news_timeout_s)
        for failure in failures:
            log.warning("%s's news: %s", self.persona.name, failure)
        store = await self.store()
        picked = news.pick(
            items,
            focus_areas=self.persona.focus_areas,
            blocked_topics=(*self.persona.blocked_topics, *split_list(self.settings.news_blocked_topics)),
            already_read=await store.read_news_ids(self.persona.name),
            limit=self.settings.news_items,
        )
        if not picked and failures and not items:
            raise ActivityFailed("no source could be read: " + "; ".join(failures))
        lines = []
        read = []
        for item, score in picked:
            take = await self._write(
                "news",
                f"You just read this article.\nTitle: {item.title}\nURL: {item.url}\nSummary: {item.summary}\n\n"
                f"In one or two sentences, give your own take: why it matters (or not) to you and the company. {VOICE}",
            )
            read.append((item.id, item.title, item.url, take, score))
            lines.append(f"- {item.title} ({item.url}): {take}")
        if read:
            await store.mark_news_read(self.persona.name, read, at=now)
        for _, title, url, take, _ in read:  # what it read joins its own knowledge
            await store.add_memory(self.persona.name, SELF, f"I read \"{title}\": {take}", kind="read",
                                   layer="knowledge", source=url)  # fmt: skip
        text = "\n".join(lines) if lines else "Nothing new worth reading."
        if failures:
            text += "\n(Could not read: " + "; ".join(failures) + ")"
        return text

    async def _goals(self, now: datetime) -> str:
        path = goals_file.goals_path(self.settings.goals_dir, self.persona.key)
        goals = goals_file.load_goals(path)
        flags = goals_file.at_risk(goals, self._local(now).date())
        text = await self._write("goals", goals_file.brief(goals, flags))
        store = await self.store()  # what it decided about its goals joins its own knowledge
        await store.add_memory(self.persona.name, SELF, text[:800], kind="decision", layer="knowledge", source="goals")
        if flags:
            text += "\n" + AT_RISK + "; ".join(flag.text for flag in flags)
        return text

    async def _team_check(self, now: datetime) -> str:
        lines = []
        for member in (self.persona.name, *self.persona.team):
            found = await self.orchestrator.list_processes.remote(agent=member)
            tasks = [p for p in found if p.kind == "task"]
            counts = {s: sum(1 for p in tasks if p.status == s) for s in ("running", "completed", "failed")}
            spend = sum(p.metrics.estimated_cost for p in found)
            failed = [p.task[:80] for p in tasks if p.status == "failed"][-2:]
            line = (
                f"{member}: {counts['running']} running, {counts['completed']} completed, {counts['failed']} failed "
                f"tasks; ${spend:.4f} spent"
            )
            if failed:
                line += "; failed: " + " | ".join(failed)
            lines.append(line)
        brief = (
            "Check in on your team. Here is what the process registry shows:\n" + "\n".join(lines) + "\n\n"
            "Write a short check-in: how they are doing and what they need from you. If something needs "
            f"following up, you may delegate it to one of them with spawn_agent. {VOICE}"
        )
        return await self._write("team_check", brief) + "\n\nRegistry: " + "; ".join(lines)

    async def _reflection(self, now: datetime) -> str:
        store = await self.store()
        since = now - timedelta(days=1)
        day = self._local(now).date()
        journal = [
            e.text
            for d in (day - timedelta(days=1), day)
            for e in await store.journal(self.persona.name, d.isoformat())
        ]
        runs = [r for r in await store.life_runs(self.persona.name, limit=20, since=since) if r.status == "completed"]
        lived = [f"{r.activity}: {r.output[:300]}" for r in runs if r.activity not in ("reflection", "journal")]
        talks = [m.content for m in await store.recall(self.persona.name, limit=20) if m.kind == "summary"][:5]
        brief = (
            "Reflect on the last day.\n"
            + ("Your journal:\n" + "\n".join(journal[-4:]) + "\n" if journal else "")
            + ("What you did:\n" + "\n".join(lived[:8]) + "\n" if lived else "")
            + ("Conversations:\n" + "\n".join(talks) + "\n" if talks else "")
            + "\nWrite two or three insights worth keeping, one per line: what you learned, what you will do "
            "differently, what matters most right now."
        )
        text = await self._write("reflection", brief)
        insights = [line.strip(" -*•\t") for line in text.splitlines() if len(line.strip(" -*•\t")) > 10][:3]
        for insight in insights or [text]:
            await store.add_memory(self.persona.name, SELF, insight, kind="reflection", source="reflection")
        return text

    async def _consolidation(self, now: datetime) -> str:
        """The sleep-time pass over memory (see life/consolidation.py), over what changed since the last."""
        store = await self.store()
        done = [
            r for r in await store.life_runs(self.persona.name, "consolidation", limit=10) if r.status == "completed"
        ]
        since = done[0].triggered_at if done else None
        return await consolidate(store, self.persona.name, since, lambda brief: self._write("consolidation", brief))

    async def _journal(self, now: datetime) -> str:
        store = await self.store()
        day = self._local(now).date().isoformat()
        earlier = [e.text for e in await store.journal(self.persona.name, day)]
        runs = [
            f"{r.activity}: {r.output[:200]}"
            for r in await store.life_runs(self.persona.name, limit=12, since=now - timedelta(hours=12))
            if r.status == "completed" and r.activity != "journal"
        ]
        brief = (
            f"Write today's journal entry ({day}, {self._local(now):%H:%M}): a few honest lines about your day."
            + ("\nWhat you did today:\n" + "\n".join(runs[:6]) if runs else "")
            + ("\nYou already wrote today:\n" + "\n".join(earlier[-2:]) + "\nDo not repeat it." if earlier else "")
            + f"\n{VOICE}"
        )
        text = await self._write("journal", brief)
        await store.append_journal(self.persona.name, day, f"**{self._local(now):%H:%M}** {text}")
        return text

    async def _post(self, now: datetime) -> str:
        store = await self.store()
        recent = [
            p for p in await store.posts(self.persona.name, since=now - timedelta(days=1)) if p.status != "blocked"
        ]
        if len(recent) >= self.settings.posts_per_day:
            return f"Not posted: {len(recent)} posts in the last 24 hours (limit {self.settings.posts_per_day})."
        read = await store.news_read(self.persona.name, limit=3)
        thoughts = [m.content for m in await store.recall(self.persona.name, subject="self", limit=2)]
        brief = (
            "Write a short public post, at most 280 characters, about something you have been reading or thinking "
            "about. No hashtags, nothing confidential."
            + ("\nYou read: " + "; ".join(f"{r.title} ({r.take[:120]})" for r in read) if read else "")
            + ("\nYou have been thinking: " + "; ".join(thoughts) if thoughts else "")
        )
        text = posts.shape(await self._write("post", brief))
        hit = posts.unsafe(text, posts.blocked_words(self.settings))
        if hit:
            await store.add_post(
                self.persona.name, text, status="blocked", targets=(), error=f"contains {hit!r}", at=now
            )
            return f"Not posted (blocked: it mentions {hit!r}): {text}"
        targets = posts.targets(self.settings)
        post_id = await store.add_post(
            self.persona.name, text, status="pending" if targets else "kept", targets=targets, at=now
        )
        undelivered = await self._deliver(post_id, text, targets, now)
        if not targets:
            return f"Posted: {text} (kept; no Slack channel or social webhook is configured)"
        if undelivered:
            return f"Posted: {text} (delivery to {', '.join(undelivered)} will be retried)"
        return f"Posted: {text}"

    async def _deliver(self, post_id: int, text: str, targets: tuple[str, ...], created_at: datetime) -> list[str]:
        store = await self.store()
        undelivered = []
        for target in targets:
            try:
                await posts.deliver(self.settings, self.persona.name, text, target, created_at)
            except OutboundFailed as exc:
                undelivered.append(target)
                await store.post_failed(post_id, f"{target}: {exc}")
                log.warning("%s's post %d not delivered to %s: %s", self.persona.name, post_id, target, exc)
            else:
                await store.post_delivered(post_id, target)
        return undelivered

    async def deliver_pending(self) -> int:
        """Retry posts a target did not take before. Returns how many are still pending."""
        store = await self.store()
        pending = await store.posts(self.persona.name, status="pending", limit=20)
        left = 0
        for post in pending:
            targets = tuple(t for t in post.pending_targets.split(",") if t)
            left += bool(await self._deliver(post.id, post.text, targets, post.created_at))
        return left
