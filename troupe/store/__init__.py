"""The durable store: SQLAlchemy 2 (async) over SQLite by default or PostgreSQL, migrated by Alembic;
Store joins one mixin per table group, and everything here survives an actor's death."""

from __future__ import annotations

from troupe.store.conversations import Bound, ConversationStore
from troupe.store.engine import MIGRATIONS, StoreBase, StoreOptions, run_migrations
from troupe.store.events import EventStore
from troupe.store.life import LifeStore
from troupe.store.memory import MemoryStore
from troupe.store.panel import PanelStore
from troupe.store.processes import ProcessStore
from troupe.store.records import (
    AuditRecord,
    BudgetEventRecord,
    CallerRecord,
    JournalRecord,
    LifeRunRecord,
    MemoryRecord,
    MessageRecord,
    NewsReadRecord,
    PostRecord,
    ScheduleOverride,
    SessionRecord,
    TurnRecord,
)
from troupe.store.schema import (
    SELF,
    Base,
    BudgetEventRow,
    CallerRow,
    JournalRow,
    LifeRunRow,
    MemoryBlockRow,
    MemoryRow,
    MessageRow,
    NewsReadRow,
    PostRow,
    ProcessRow,
    ScheduleRow,
    SeenEventRow,
    SessionRow,
    Stamp,
)


class Store(ConversationStore, MemoryStore, ProcessStore, LifeStore, EventStore, PanelStore):
    """Callers, sessions and their messages (and turns' figures), persona memory, finished processes and
    their metrics, life-loop runs, journals, budget events, webhook ids and the audit log: one object over
    one engine, opened with Store.open."""


__all__ = [
    "MIGRATIONS",
    "SELF",
    "AuditRecord",
    "Base",
    "Bound",
    "BudgetEventRecord",
    "BudgetEventRow",
    "CallerRecord",
    "CallerRow",
    "ConversationStore",
    "EventStore",
    "JournalRecord",
    "JournalRow",
    "LifeRunRecord",
    "LifeRunRow",
    "LifeStore",
    "MemoryBlockRow",
    "MemoryRecord",
    "MemoryRow",
    "MemoryStore",
    "MessageRecord",
    "MessageRow",
    "NewsReadRecord",
    "NewsReadRow",
    "PanelStore",
    "PostRecord",
    "PostRow",
    "ProcessRow",
    "ProcessStore",
    "ScheduleOverride",
    "ScheduleRow",
    "SeenEventRow",
    "SessionRecord",
    "SessionRow",
    "Stamp",
    "Store",
    "StoreBase",
    "StoreOptions",
    "TurnRecord",
    "run_migrations",
]
