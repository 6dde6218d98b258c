"""A troupe with a day behind it, for the control panel's tests and demos: seed_day writes a day of
conversations and of each executive's life into a store through the store's own methods, then dates it."""

from __future__ import annotations

import dataclasses
import json
import math
import random
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, bindparam, update

from troupe.config.pricing import cost
from troupe.core.caller import ANONYMOUS, channel_of, is_anonymous
from troupe.core.chat import ChatMessage, ToolCall, estimate_tokens
from troupe.core.messages import TurnStats
from troupe.core.persona_file import PersonaCatalog, PersonaDef
from troupe.core.schedule import ACTIVITIES, default_schedule, next_slot
from troupe.store import Store, schema

DAY = timedelta(hours=24)
MODEL = "gpt-4o-mini"  # the seeded turns cost what troupe.config.pricing says this model charges
KINDS = ("phone", "slack", "anonymous")
KIND_WEIGHTS = (60, 25, 15)
TURNS_WEIGHTS = (25, 25, 20, 14, 10, 6)  # how many conversations run 1, 2, ... 6 turns
ERROR_SHARE, INTERRUPTED_SHARE, TOOL_SHARE = 0.02, 0.03, 0.12  # of turns
ERRORS = ("model_unavailable", "budget_exceeded")
ACTIVE_SHARE = 0.05  # of conversations still going at `now` (10 of 200)
IDLE = timedelta(seconds=120)  # Settings.session_idle_timeout_s: a quiet session is summarised and ended
SPECIALISTS = 4  # how many specialists take calls of their own
FAILING = ("news", "goals", "team_check", "reflection")  # the activities that may fail (feeds, the model)
AREA_CODES = ("415", "415", "415", "212", "312", "646", "617", "206")  # San Francisco first

ASKS = (
    "Quick one: where are we on {topic}?",
    "Can you give me the short version of {topic} for tomorrow's meeting?",
    "What would you change about our {topic} this quarter?",
    "A customer is asking about {topic}. What should I tell them?",
    "Is {topic} on track for the end of the month?",
    "What is the biggest risk in {topic} right now?",
    "Can we move the {topic} review to Thursday?",
    "Who owns {topic} these days?",
)
FOLLOW_UPS = (
    "Thanks. And what about {topic}?",
    "Makes sense. Anything you need from me?",
    "Can you send that to me in writing?",
    "How confident are you in that?",
    "OK. What happens if it slips a week?",
)
REPLIES = (
    "Short version: {topic} is on track. The one open item is sign-off, and I expect it by Friday.",
    "I would keep {topic} simple this quarter: one owner, one number, a check-in every week.",
    "We are about {share}% through {topic}. I will send you the details in writing after this.",
    "The risk in {topic} is timing, not money. I would rather slip a week than cut scope.",
    "Tell them {topic} is a priority for us and that they will have an update by {weekday}.",
    "{weekday} works. I will move the {topic} review and let the team know.",
    "{owner} owns {topic}; loop me in if it stalls.",
    "Good question. On {topic}, I would start from last month's numbers and go from there.",
)
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")
OUTCOMES = (
    "promised a written update by Friday",
    "shared the current plan and its open risks",
    "agreed to move the review to Thursday",
    "suggested starting from last month's numbers",
    "named an owner and a date",
)
FACTS = (
    "Prefers a short summary before the numbers.",
    "Asked to be called back after 3 pm their time.",
    "Works with us on {topic} from a partner firm.",
    "Travels most Mondays; Slack reaches them faster than the phone.",
    "Wants every decision on {topic} confirmed in writing.",
)
OUTPUTS = {
    "news": "Read {n} new items; the one that matters for {topic}: a competitor cut its prices by 10%.",
    "goals": "Reviewed {n} goals; {topic} is on track, hiring is a week behind.",
    "team_check": "Checked in with {team}: {topic} is moving; one blocker, review capacity.",
    "reflection": "I keep coming back to {topic}: callers want a plain answer first and the details after.",
    "journal": "A full day. Most calls were about {topic}; I want fewer meetings tomorrow.",
    "consolidation": "Consolidated memory: {n} facts merged, 1 superseded, {n} episodes kept.",
}
MORNING_JOURNAL = "An early start. Today is about {topic}; I am keeping the first hour free to think."
FAILURES = {
    "news": "Failed: every news source failed ({n} tried)",
    "goals": "Failed: the goals file could not be read",
}
MODEL_FAILURE = "Failed: ModelUnavailable: The model did not answer in time."
POSTS = (
    "What we learned this week about {topic}: start from the customer's words, not ours.",
    "Small teams and clear owners: the only {topic} playbook that has worked for us.",
    "Three things I would tell any founder about {topic}, and none of them is a tool.",
)
BLOCKED_POST = "Cannot say much yet, but the acquisition talks around {topic} are going well."


@dataclass(frozen=True)
class Seeded:
    """What seed_day wrote, for a test to assert against."""

    now: datetime
    since: datetime  # now - 24 h: everything seeded lies between the two
    session_ids: tuple[str, ...]  # in the order the conversations started
    active_session_ids: tuple[str, ...]  # still going at `now`; every other one has ended
    caller_ids: tuple[str, ...]  # each caller once, first seen first (anonymous ones too, never stored as callers)
    turns: int
    messages: int
    tool_calls: int
    interrupted: int  # turns whose reply was cut off
    errors: Mapping[str, int]  # error code: turns that failed with it (and have no reply)
    cost_by_persona: Mapping[str, float]  # persona name: USD of its turns
    life_runs: Mapping[str, Mapping[str, int]]  # persona name: activity: runs
    life_runs_by_status: Mapping[str, int]  # completed, failed, skipped: runs
    journal_days: Mapping[str, tuple[str, ...]]  # persona name: the local days it has entries for
    post_ids: tuple[int, ...]
    posts_by_status: Mapping[str, int]  # delivered, pending, blocked: posts
    memory_ids: tuple[int, ...]


@dataclass(frozen=True)
class _Turn:
    turn_id: str
    at: datetime  # when it finished: when the store keeps its messages and figures
    messages: tuple[ChatMessage, ...]
    stats: TurnStats


@dataclass(eq=False)  # each conversation is itself: compared by identity
class _Conversation:
    kind: str  # phone, slack or anonymous
    persona: PersonaDef
    topic: str
    process_id: str
    session_id: str = ""
    caller_id: str = ""
    turns: list[_Turn] = field(default_factory=list)
    ended_at: datetime | None = None
    summary: str | None = None

    @property
    def started_at(self) -> datetime:
        first = self.turns[0]
        return first.at - timedelta(milliseconds=first.stats.duration_ms)


@dataclass
class _Dates:
    """The moments each row should carry (the store stamps rows with the time of writing), by table."""

    sessions: list[dict[str, Any]] = field(default_factory=list)
    callers: list[dict[str, Any]] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    turns: list[dict[str, Any]] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    posts: list[dict[str, Any]] = field(default_factory=list)
    journal: list[dict[str, Any]] = field(default_factory=list)
    memories: list[dict[str, Any]] = field(default_factory=list)


async def seed_day(
    store: Store, catalog: PersonaCatalog, *, sessions: int = 200, now: datetime | None = None, seed: int = 7
) -> Seeded:
    """Fill `store` (empty of conversations and life) with the 24 hours before `now` (default: now, UTC):
    `sessions` conversations with the executives (and a few specialists), from callers by phone, Slack and
    anonymously, and for each executive the runs its default schedule made, journals, posts and memories.
    The same `seed` and `now` write the same day."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    rng = random.Random(seed)
    dates = _Dates()
    conversations = _plan_conversations(rng, catalog, sessions, now)
    await _keep_conversations(store, conversations, dates)
    life = _Life(store, rng, now, dates)
    for persona in catalog.executives():
        await life.live(persona, catalog.names().index(persona.name), conversations)
    await store._write(_backdate, dates)

    turns = [t for c in conversations for t in c.turns]
    costs: dict[str, list[float]] = defaultdict(list)
    for c in conversations:
        costs[c.persona.name] += [t.stats.cost_usd for t in c.turns]
    return Seeded(
        now=now,
        since=now - DAY,
        session_ids=tuple(c.session_id for c in conversations),
        active_session_ids=tuple(c.session_id for c in conversations if c.ended_at is None),
        caller_ids=tuple(dict.fromkeys(c.caller_id for c in conversations)),
        turns=len(turns),
        messages=sum(len(t.messages) for t in turns),
        tool_calls=sum(t.stats.tool_calls for t in turns),
        interrupted=sum(t.stats.interrupted for t in turns),
        errors=dict(Counter(t.stats.error_code for t in turns if t.stats.error_code)),
        cost_by_persona={name: math.fsum(spent) for name, spent in costs.items()},
        life_runs={name: dict(runs) for name, runs in life.runs.items()},
        life_runs_by_status=dict(life.statuses),
        journal_days={name: tuple(sorted(days)) for name, days in life.journal_days.items()},
        post_ids=tuple(life.post_ids),
        posts_by_status=dict(life.post_statuses),
        memory_ids=tuple(life.memory_ids),
    )


# ---------------------------------------------------------------- conversations


def _hex(rng: random.Random, digits: int) -> str:
    return f"{rng.getrandbits(4 * digits):0{digits}x}"


def _topics(persona: PersonaDef) -> tuple[str, ...]:
    return persona.focus_areas or ("the plan",)


def _busy(hour: int) -> float:
    """How many calls a local hour brings: the working day most, mornings and evenings some, nights few."""
    if 9 <= hour < 18:
        return 3.0
    if 7 <= hour < 9 or 18 <= hour < 22:
        return 1.5
    return 0.5


def _plan_conversations(rng: random.Random, catalog: PersonaCatalog, count: int, now: datetime) -> list[_Conversation]:
    """The day's conversations, oldest first: who called whom, when (busiest in the persona's working
    hours), and what was said; a few are still going at `now`, the rest ended when they fell idle."""
    executives = catalog.executives()
    specialists = catalog.specialists()
    talking = executives + rng.sample(specialists, min(SPECIALISTS, len(specialists)))
    # the CEO is called most; specialists share about 15% of the calls
    weights = [2.6 - 0.25 * i for i in range(len(executives))] + [0.45] * (len(talking) - len(executives))
    session_processes = [_hex(rng, 8) for _ in range(8)]  # the warm pool's session actors
    conversations = []
    for _ in range(count):
        persona = rng.choices(talking, weights)[0]
        kind = rng.choices(KINDS, KIND_WEIGHTS)[0]
        topic = rng.choice(_topics(persona))
        conversations.append(_Conversation(kind, persona, topic, rng.choice(session_processes)))
    identified = [c for c in conversations if c.kind != "anonymous"]
    active = rng.sample(identified, min(len(identified), max(1, round(count * ACTIVE_SHARE))))
    hours: dict[str, list[float]] = {}
    for c in conversations:
        n = 1 if c.kind == "anonymous" else rng.choices(range(1, 7), TURNS_WEIGHTS)[0]
        c.turns = _plan_turns(rng, c, n, now - DAY)
        if c in active:  # going now: its last turn within the idle timeout
            end = now - timedelta(seconds=rng.uniform(5, IDLE.total_seconds() - 10))
        else:
            if c.persona.name not in hours:
                tz = ZoneInfo(c.persona.timezone)
                local = [(now - DAY + timedelta(hours=h, minutes=30)).astimezone(tz).hour for h in range(24)]
                hours[c.persona.name] = [_busy(h) for h in local]
            hour = rng.choices(range(24), hours[c.persona.name])[0]
            end = c.turns[-1].at + timedelta(hours=hour, seconds=rng.uniform(0, 3600))
            end = min(end, now - IDLE - timedelta(seconds=rng.uniform(5, 600)))
        shift = end - c.turns[-1].at
        c.turns = [dataclasses.replace(t, at=t.at + shift) for t in c.turns]
        if c not in active:
            c.ended_at = c.turns[-1].at + IDLE + timedelta(milliseconds=rng.randint(300, 4000))
            if c.kind != "anonymous":  # a one-turn conversation ends unsummarised
                c.summary = f"The caller asked about {c.topic}; {c.persona.name} {rng.choice(OUTCOMES)}."
    conversations.sort(key=lambda c: c.started_at)
    _name_callers(rng, conversations, active)
    return conversations


def _name_callers(rng: random.Random, conversations: list[_Conversation], active: list[_Conversation]) -> None:
    """Give each conversation its ids: phone callers come back (a few often), a Slack thread is a caller
    of its own (troupe.integrations.slack.thread_caller_id), an anonymous caller is new every time."""
    phones = list(dict.fromkeys(f"+1{rng.choice(AREA_CODES)}55501{rng.randrange(100):02d}" for _ in range(90)))
    often = [1 / (1 + i / 6) for i in range(len(phones))]
    channels = [f"C0{_hex(rng, 8).upper()}" for _ in range(6)]
    live: set[tuple[str, str]] = set()  # one active conversation per caller and persona
    for c in conversations:
        c.session_id = _hex(rng, 32)
        if c.kind == "phone":
            c.caller_id = rng.choices(phones, often)[0]
            while c in active and (c.caller_id, c.persona.name) in live:
                c.caller_id = rng.choice(phones)
        elif c.kind == "slack":
            thread = f"{c.started_at.timestamp():.6f}"
            c.caller_id = f"slack-T0TROUPE-{rng.choice(channels)}-{thread}"
        else:
            c.caller_id = f"{ANONYMOUS}{_hex(rng, 32)}"
        if c in active:
            live.add((c.caller_id, c.persona.name))


def _plan_turns(rng: random.Random, c: _Conversation, n: int, start: datetime) -> list[_Turn]:
    turns = []
    moment = start
    for index in range(n):
        if index:
            moment += timedelta(seconds=rng.uniform(8, 90))  # the caller reads and answers
        turn = _turn(rng, c.persona, c.topic if index == 0 else rng.choice(_topics(c.persona)), index)
        moment += timedelta(milliseconds=turn.stats.duration_ms)
        turns.append(dataclasses.replace(turn, at=moment))
    return turns


def _turn(rng: random.Random, persona: PersonaDef, topic: str, index: int) -> _Turn:
    """One turn: the caller's line and the reply (through a tool, sometimes), or cut off, or failed."""
    turn_id = _hex(rng, 16)
    ask = rng.choice(ASKS if index == 0 else ASKS + FOLLOW_UPS).format(topic=topic)
    user = ChatMessage(role="user", content=ask)
    prompt_tokens = 900 + 110 * index + estimate_tokens(ask)  # the system prompt, memory and the history
    roll = rng.random()
    if roll < ERROR_SHARE:
        code = rng.choices(ERRORS, (3, 1))[0]
        waited = rng.randint(2000, 8000) if code == "model_unavailable" else rng.randint(3, 20)
        stats = TurnStats(turn_id=turn_id, persona=persona.name, duration_ms=waited, error_code=code)
        return _Turn(turn_id, datetime.min, (user,), stats)
    interrupted = roll < ERROR_SHARE + INTERRUPTED_SHARE
    owner = rng.choice(persona.team or (persona.name,))
    reply = rng.choice(REPLIES).format(
        topic=topic, owner=owner, share=rng.randrange(20, 90, 5), weekday=rng.choice(WEEKDAYS)
    )
    if interrupted:
        words = reply.split()
        reply = " ".join(words[: max(2, int(len(words) * rng.uniform(0.25, 0.6)))])
    messages = [user]
    ttft = rng.lognormvariate(math.log(250), 0.35)
    input_tokens, tool_calls, tool_ms = prompt_tokens, 0, 0
    tools = [name for name in ("recall", "remember") if name in persona.tools]
    if tools and not interrupted and roll > 1 - TOOL_SHARE:
        name = rng.choice(tools)
        arguments = {"query": topic} if name == "recall" else {"fact": f"The caller follows {topic} closely."}
        call = ToolCall(id=f"call_{_hex(rng, 24)}", name=name, arguments=json.dumps(arguments))
        result = f"Earlier: they asked about {topic} last week." if name == "recall" else "Remembered."
        messages += [
            ChatMessage(role="assistant", tool_calls=(call,)),
            ChatMessage(role="tool", content=result, tool_call_id=call.id, name=name),
        ]
        input_tokens, tool_calls = 2 * prompt_tokens + 40, 1  # the model is called again with the result
        tool_ms = rng.randint(300, 900)
    messages.append(ChatMessage(role="assistant", content=reply))
    output_tokens = estimate_tokens(reply) + 20 * tool_calls
    usd, _ = cost(MODEL, input_tokens, output_tokens)
    stats = TurnStats(
        turn_id=turn_id,
        persona=persona.name,
        ttft_ms=round(ttft) + tool_ms,
        duration_ms=round(ttft) + tool_ms + output_tokens * rng.randint(15, 30),
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        tool_calls=tool_calls,
        cost_usd=round(usd, 8),
        interrupted=interrupted,
    )
    return _Turn(turn_id, datetime.min, tuple(messages), stats)


async def _keep_conversations(store: Store, conversations: list[_Conversation], dates: _Dates) -> None:
    """Write them as the sessions do, in the order it happened (so the turns' ids follow their times)."""
    events: list[tuple[datetime, int, _Conversation, _Turn | None]] = []
    for c in conversations:
        if c.kind == "anonymous":
            events.append((c.turns[0].at, 1, c, c.turns[0]))
            continue
        events.append((c.started_at, 0, c, None))
        events += [(t.at, 1, c, t) for t in c.turns]
        if c.ended_at is not None:
            events.append((c.ended_at, 2, c, None))
    events.sort(key=lambda e: (e[0], e[1]))
    for _, step, c, turn in events:
        name = c.persona.name
        if c.kind == "anonymous" and turn is not None:
            await store.keep_one_turn(
                c.session_id, c.caller_id, name, c.process_id, turn.messages, turn_id=turn.turn_id,
                interrupted=turn.stats.interrupted, reply_from=1, stats=turn.stats,
            )  # fmt: skip
        elif step == 0:
            await store.open_session(c.session_id, c.caller_id, name, c.process_id, resumed=False, identified=True)
        elif turn is not None:
            await store.append_messages(
                c.session_id, turn.messages, turn_id=turn.turn_id, interrupted=turn.stats.interrupted,
                reply_from=1, stats=turn.stats,
            )  # fmt: skip
        else:
            await store.end_session(c.session_id, c.summary)
    seen: dict[str, tuple[datetime, datetime]] = {}
    for c in conversations:
        last_active = c.turns[-1].at
        dates.sessions.append(
            {"id": c.session_id, "started_at": c.started_at, "last_active_at": last_active, "ended_at": c.ended_at}
        )
        dates.messages += [{"session_id": c.session_id, "turn_id": t.turn_id, "created_at": t.at} for t in c.turns]
        dates.turns += [{"session_id": c.session_id, "turn_id": t.turn_id, "at": t.at} for t in c.turns]
        if not is_anonymous(c.caller_id):
            first, last = seen.get(c.caller_id, (c.started_at, c.turns[-1].at))
            seen[c.caller_id] = (min(first, c.started_at), max(last, c.turns[-1].at))
    dates.callers += [
        {"caller_id": caller, "first_seen_at": first, "last_seen_at": last} for caller, (first, last) in seen.items()
    ]


# ---------------------------------------------------------------- life


class _Life:
    """One executive's day at a time: its scheduled runs (a few failed, one missed), journals, posts and
    memories, written through the store and their moments kept in `dates`."""

    def __init__(self, store: Store, rng: random.Random, now: datetime, dates: _Dates) -> None:
        self.store, self.rng, self.now, self.dates = store, rng, now, dates
        self.runs: dict[str, Counter[str]] = defaultdict(Counter)
        self.statuses: Counter[str] = Counter()
        self.journal_days: dict[str, set[str]] = defaultdict(set)
        self.post_ids: list[int] = []
        self.post_statuses: Counter[str] = Counter()
        self.memory_ids: list[int] = []

    async def live(self, persona: PersonaDef, index: int, conversations: list[_Conversation]) -> None:
        """The executive's day; `index` is its place in the catalog, which staggers its default schedule."""
        rng, since = self.rng, self.now - DAY
        schedule = {**default_schedule(index), **persona.schedule}  # as troupe.actors.life_loop has it
        slots = {a: _slots(schedule[a], persona.timezone, since, self.now) for a in ACTIVITIES}
        failing = [(a, s) for a in FAILING for s in slots[a]]
        failed = set(rng.sample(failing, min(len(failing), 1 + rng.randrange(2))))
        missed = {("consolidation", slots["consolidation"][0])} if index == 0 and slots["consolidation"] else set()
        process_id = _hex(rng, 8)
        topics = _topics(persona)
        post_count = max(len(slots["post"]), rng.randint(2, 4))
        post_moments: list[tuple[datetime | None, datetime]] = [(s, s) for s in slots["post"]]
        post_moments += [(None, self._moment(since, self.now)) for _ in range(post_count - len(slots["post"]))]
        for activity in ACTIVITIES:
            if activity == "post":
                continue
            for slot in slots[activity]:
                status, triggered = ("failed" if (activity, slot) in failed else "completed"), self._tick(slot)
                if (activity, slot) in missed:  # troupe was down, and came back long after the slot
                    status, triggered = "skipped", min(slot + timedelta(minutes=rng.uniform(40, 90)), self.now)
                await self._run(persona, activity, slot, triggered, status, rng.choice(topics), process_id)
        tz = ZoneInfo(persona.timezone)
        midnight = self.now.astimezone(tz).replace(hour=0, minute=0, second=0, microsecond=0).astimezone(UTC)
        for start, end in ((since, midnight), (max(midnight, since), self.now)):  # yesterday, today
            day = start.astimezone(tz).date().isoformat()
            if day not in self.journal_days[persona.name] and end > start:
                # nothing scheduled wrote that day's journal: the operator's button did, late in it
                at = end - min(timedelta(minutes=rng.uniform(3, 180)), (end - start) / 2)
                await self._run(persona, "journal", None, at, "completed", rng.choice(topics), process_id)
        statuses = ["delivered", rng.choice(("delivered", "pending")), "blocked", "delivered"]
        for (post_slot, at), status in zip(sorted(post_moments, key=lambda m: m[1]), statuses, strict=False):
            await self._post(persona, post_slot, at, status, rng.choice(topics), process_id)
        await self._remember(persona, conversations)

    def _moment(self, start: datetime, end: datetime) -> datetime:
        return start + timedelta(seconds=self.rng.uniform(0, max(0.0, (end - start).total_seconds())))

    def _tick(self, slot: datetime) -> datetime:
        """When the life loop's tick after `slot` took it up."""
        return min(slot + timedelta(seconds=self.rng.uniform(1, 30)), self.now)

    async def _run(
        self, persona: PersonaDef, activity: str, slot: datetime | None, triggered: datetime, status: str,
        topic: str, process_id: str, output: str = "",
    ) -> None:  # fmt: skip
        """One run, as the life loop records it (and, for a journal run, the entry it wrote)."""
        rng = self.rng
        took = 0.0 if status == "skipped" else rng.uniform(2, 40)
        finished = min(triggered + timedelta(seconds=took), self.now)
        local = triggered.astimezone(ZoneInfo(persona.timezone))  # the tick's day and time, as the loop writes them
        n = rng.randint(2, 9)
        if status == "skipped":
            assert slot is not None
            output = f"Missed while troupe was down (slot {slot.isoformat()}, more than 15 min late)."
        elif status == "failed":
            output = FAILURES.get(activity, MODEL_FAILURE).format(n=n)
        elif not output:
            template = MORNING_JOURNAL if activity == "journal" and local.hour < 12 else OUTPUTS[activity]
            output = template.format(n=n, topic=topic, team=" and ".join(persona.team[:2]) or "the team")
        await self.store.finish_life_run(
            persona.name, activity, slot, status=status, output=output, process_id=process_id, at=triggered
        )
        self.runs[persona.name][activity] += 1
        self.statuses[status] += 1
        self.dates.runs.append(
            {"persona": persona.name, "activity": activity, "triggered_at": triggered, "finished_at": finished}
        )
        if activity == "journal" and status == "completed":
            text = f"**{local:%H:%M}** {output}"
            await self.store.append_journal(persona.name, local.date().isoformat(), text)
            self.journal_days[persona.name].add(local.date().isoformat())
            self.dates.journal.append(
                {"persona": persona.name, "day": local.date().isoformat(), "text": text, "created_at": finished}
            )

    async def _post(
        self, persona: PersonaDef, slot: datetime | None, at: datetime, status: str, topic: str, process_id: str
    ) -> None:
        """A post run and its post: delivered to Slack, pending on the webhook, or blocked for a word."""
        store = self.store
        at = self._tick(slot) if slot is not None else at
        if status == "blocked":
            text = BLOCKED_POST.format(topic=topic)
            post_id = await store.add_post(persona.name, text, status="blocked", targets=(),
                                           error="contains 'acquisition'", at=at)  # fmt: skip
            output = f"Not posted (blocked: it mentions 'acquisition'): {text}"
        else:
            text = self.rng.choice(POSTS).format(topic=topic)
            targets = ("slack",) if status == "delivered" else ("slack", "webhook")
            post_id = await store.add_post(persona.name, text, status="pending", targets=targets, at=at)
            await store.post_delivered(post_id, "slack")
            output = f"Posted: {text}"
            if status == "pending":
                await store.post_failed(post_id, "webhook: the endpoint answered 503 after 3 tries")
                output += " (delivery to webhook will be retried)"
        self.post_ids.append(post_id)
        self.post_statuses[status] += 1
        if status == "delivered":
            self.dates.posts.append({"id": post_id, "delivered_at": at + timedelta(seconds=2)})
        await self._run(persona, "post", slot, at, "completed", topic, process_id, output)

    async def _remember(self, persona: PersonaDef, conversations: list[_Conversation]) -> None:
        """Four memories: what it learned itself, two facts about callers and one conversation's episode,
        each dated when it would have been kept (a caller's, when their conversation ended)."""
        rng = self.rng
        mine = [c for c in conversations if c.persona.name == persona.name and c.ended_at and c.summary]
        lesson = f"Lesson of the day: {rng.choice(_topics(persona))} moves faster when one person owns it."
        memories = [(schema.SELF, "reflection", "knowledge", lesson, self._moment(self.now - DAY, self.now))]
        memories += [
            (c.caller_id, "fact", "profile", rng.choice(FACTS).format(topic=c.topic), c.ended_at or self.now)
            for c in rng.sample(mine, min(2, len(mine)))
        ]
        memories += [(c.caller_id, "summary", "episode", c.summary or "", c.ended_at or self.now) for c in mine[-1:]]
        for subject, kind, layer, content, at in memories:
            memory = await self.store.add_memory(
                persona.name, subject, content, kind=kind, layer=layer, importance=round(rng.uniform(0.5, 0.9), 2),
                channel="" if subject == schema.SELF else channel_of(subject, ""),
                source="reflection" if subject == schema.SELF else "session",
            )  # fmt: skip
            self.memory_ids.append(memory.id)
            moment = at + timedelta(seconds=rng.uniform(2, 20))  # kept just after the conversation ended
            self.dates.memories.append({"id": memory.id, "created_at": min(moment, self.now)})


def _slots(expression: str, tz_name: str, since: datetime, until: datetime) -> list[datetime]:
    """The slots of a schedule after `since` and at or before `until`."""
    slots: list[datetime] = []
    moment = next_slot(expression, tz_name, since)
    while moment is not None and moment <= until:
        slots.append(moment)
        moment = next_slot(expression, tz_name, moment)
    return slots


# ---------------------------------------------------------------- dating what was written


def _backdate(conn: Connection, dates: _Dates) -> None:
    """Move every row written to the moment it stands for, in one transaction: one UPDATE per table, run
    for each of its rows (found by the columns named here; the row's other keys are the columns to set)."""
    tables = [
        (schema.SessionRow, ("id",), dates.sessions),
        (schema.CallerRow, ("caller_id",), dates.callers),
        (schema.MessageRow, ("session_id", "turn_id"), dates.messages),
        (schema.TurnRow, ("session_id", "turn_id"), dates.turns),
        (schema.LifeRunRow, ("persona", "activity", "triggered_at"), dates.runs),
        (schema.PostRow, ("id",), dates.posts),
        (schema.JournalRow, ("persona", "day", "text"), dates.journal),
        (schema.MemoryRow, ("id",), dates.memories),
    ]
    for table, keys, rows in tables:
        if rows:
            columns = table.__table__.c
            statement = update(table).where(*(columns[k] == bindparam(f"b_{k}") for k in keys))
            statement = statement.values({k: bindparam(f"b_{k}") for k in rows[0] if k not in keys})
            conn.execute(statement, [{f"b_{k}": v for k, v in row.items()} for row in rows])
