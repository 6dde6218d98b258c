"""The orchestrator's registry as plain logic: every process row, the bounded event log and spend by
agent, written to the store in batches (no Ray here: the orchestrator actor wraps it)."""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Collection, Iterable
from typing import Any

from troupe.core.events import group_of, level_of
from troupe.core.messages import MetricsDelta, ProcessInfo, ProcessStatus, Timings, utcnow
from troupe.store import Store

log = logging.getLogger(__name__)

EVENT_LOG = 2000
FINISHED_KEPT = 500
FLUSH_DELAY_S = 0.5
WRITE_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class WriteTimes:
    """Durations tallied into histogram buckets (the last one past every bound), as plain data for the
    orchestrator's status: the door exports it as a Prometheus histogram."""

    def __init__(self, bounds: tuple[float, ...] = WRITE_BUCKETS_S) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total_s = 0.0

    def add(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total_s += seconds

    def snapshot(self) -> Timings:
        return Timings(le=self.bounds, counts=tuple(self.counts), sum=self.total_s)


class Registry:
    """Process rows by id, the ids changed since the last write (`dirty`), the event log and spend by
    agent. `spawn` runs a coroutine in the background (the delayed flush); `store` is set once open."""

    def __init__(self, spawn: Callable[[Awaitable[Any]], None], store: Store | None = None) -> None:
        self.spawn = spawn
        self.store = store
        self.processes: dict[str, ProcessInfo] = {}
        self.dirty: set[str] = set()
        self.events: deque[dict[str, Any]] = deque(maxlen=EVENT_LOG)
        self.event_seq = 0
        self.spend: dict[str, float] = {}
        self.restarted: Counter[str] = Counter()  # restarts by process kind since this registry began
        self.writes = WriteTimes()  # how long its writes to the store take
        self._flush_due = False
        self.lost: list[ProcessInfo] = []  # what was alive when the previous orchestrator went away
        self.last_death_at = float("-inf")  # when a supervised process last died (monotonic)

    async def rebuild(self) -> None:
        """Load spend and the latest rows from the store; rows that were alive when the previous
        orchestrator went away are marked failed."""
        assert self.store is not None
        self.spend = await self.store.spend_by_agent()
        lost = []
        for info in await self.store.load_processes(limit=FINISHED_KEPT):
            if info.status in ("running", "pending"):
                # it was alive when the previous orchestrator went away; it is not any more
                info = info.model_copy(
                    update={
                        "status": "failed",
                        "ended_at": utcnow(),
                        "error": "interrupted: the orchestrator restarted",
                    }
                )
                lost.append(info)
            self.processes[info.id] = info
        if lost:
            await self.store.save_processes(lost)  # one write, however many it lost
        self.lost = lost

    def register(self, info: ProcessInfo) -> str:
        self.processes[info.id] = info
        self.dirty.add(info.id)
        self.emit("process.started", process=info.id, kind=info.kind, agent=info.agent, name=info.name)
        return info.id

    def update(self, pid: str, **changes: Any) -> ProcessInfo:
        info = self.processes[pid].model_copy(update=changes)
        self.processes[pid] = info
        self.dirty.add(pid)
        return info

    def set_status(self, pid: str, status: ProcessStatus, error: str | None = None) -> None:
        if pid not in self.processes:
            return
        before = self.processes[pid].status
        finished = status in ("completed", "failed")
        self.update(pid, status=status, error=error, ended_at=utcnow() if finished else None)
        if before != status:
            info = self.processes[pid]
            self.emit(f"process.{status}", process=pid, kind=info.kind, agent=info.agent, error=error)
        if finished:
            self.flush_soon()

    def forget(self, pid: str) -> None:
        """Drop a row from memory without writing it again (its identity was merged into another)."""
        self.processes.pop(pid, None)
        self.dirty.discard(pid)

    def emit(self, event_type: str, **data: Any) -> None:
        self.event_seq += 1
        typed = {"group": group_of(event_type, data), "level": level_of(event_type)}
        self.events.append({"seq": self.event_seq, "type": event_type, "at": utcnow().isoformat(), **typed, **data})
        if event_type == "process.restarted" and (info := self.processes.get(data.get("process", ""))):
            self.restarted[info.kind] += 1
        elif event_type == "process.died":
            self.last_death_at = time.monotonic()

    def flush_soon(self) -> None:
        """A process finished: write the registry within FLUSH_DELAY_S, in one transaction with whatever
        else changed meanwhile (one write per finished process would queue callers behind the store)."""
        if not self._flush_due:
            self._flush_due = True
            self.spawn(self._flush_later())

    async def _flush_later(self) -> None:
        await asyncio.sleep(FLUSH_DELAY_S)
        self._flush_due = False
        await self.flush()

    async def flush(self) -> None:
        if self.store is None:
            return
        pending, self.dirty = self.dirty, set()
        infos = [self.processes[pid] for pid in pending if pid in self.processes]
        if not infos:
            return
        began = time.perf_counter()
        try:
            await self.store.save_processes(infos)
        except Exception:
            self.dirty |= {info.id for info in infos}
            log.warning("could not save %d processes", len(infos), exc_info=True)
        finally:
            self.writes.add(time.perf_counter() - began)

    def report(
        self, process_id: str, delta: MetricsDelta, status: ProcessStatus | None = None, error: str | None = None
    ) -> ProcessInfo | None:
        """A process reports the work it did: its metrics and its persona's spend grow. Returns the row as
        it was before the report (None for an unknown process)."""
        info = self.processes.get(process_id)
        if info is None:
            return None
        changes: dict[str, Any] = {"metrics": info.metrics.plus(delta)}
        self.spend[info.agent] = self.spend.get(info.agent, 0.0) + delta.cost_usd
        self.processes[process_id] = info.model_copy(update=changes)
        self.dirty.add(process_id)
        if status == "running" and info.status == "completed":
            pass  # a late report from an actor since let go does not bring its finished process back
        elif status and status != info.status:
            self.set_status(process_id, status, error)
        elif status == "running" and info.error and error is None:
            self.update(process_id, error=None)
        if error:
            self.emit("turn.failed", process=process_id, agent=info.agent, error=error)
        return info

    def trim_finished(self) -> None:
        finished = [p for p in self.processes.values() if p.status in ("completed", "failed")]
        if len(finished) > FINISHED_KEPT:
            finished.sort(key=lambda p: p.ended_at or p.started_at)
            for info in finished[: len(finished) - FINISHED_KEPT]:
                if info.id not in self.dirty:
                    self.processes.pop(info.id, None)

    def list_processes(
        self, status: str | None = None, agent: str | None = None, kind: str | None = None
    ) -> list[ProcessInfo]:
        found = list(self.processes.values())
        if status:
            found = [p for p in found if p.status == status]
        if agent:
            found = [p for p in found if p.agent.lower() == agent.lower()]
        if kind:
            found = [p for p in found if p.kind == kind]
        return sorted(found, key=lambda p: p.started_at)

    def get_process(self, pid: str) -> tuple[ProcessInfo, list[ProcessInfo]] | None:
        info = self.processes.get(pid)
        if info is None:
            return None
        return info, [p for p in self.processes.values() if p.parent_id == pid]

    def events_since(self, seq: int = 0, limit: int = 200) -> list[dict[str, Any]]:
        return [e for e in self.events if e["seq"] > seq][:limit]

    def recent_events(
        self, *, groups: Collection[str] = (), type_prefix: str = "", agent: str = "", limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[dict[str, Any]], int]:  # fmt: skip
        """The event log newest first, of the given groups (all when none), types starting with
        `type_prefix` and `agent` (any when ""): a page of it and how many match (the log keeps the last
        EVENT_LOG)."""
        found = [e for e in reversed(self.events)
                 if (not groups or e["group"] in groups) and e["type"].startswith(type_prefix)
                 and (not agent or e.get("agent") == agent)]  # fmt: skip
        return found[offset : offset + limit], len(found)


def restarts_by_kind(processes: Iterable[ProcessInfo]) -> dict[str, int]:
    totals: Counter[str] = Counter()
    for info in processes:
        totals[info.kind] += info.restarts
    return dict(totals)
