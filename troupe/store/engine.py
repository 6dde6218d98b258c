"""The store's engine: opening it (SQLite pragmas, a small PostgreSQL pool per process, Alembic migrations
to head under a lock), the plain SQLite writer engine, ping and close; StoreBase holds what every mixin uses."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from opentelemetry.trace import SpanKind
from sqlalchemy import Engine, create_engine, event, select, text
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry

from troupe.config.settings import Settings, redact_url
from troupe.core import tracing
from troupe.core.errors import StoreUnavailable

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
# pg_advisory_xact_lock's key for "migrating troupe's schema": any fixed 64-bit number, the same in every process
MIGRATION_LOCK = 0x7472_6F75_7065_0001
TOO_MANY_CONNECTIONS = "53300"  # PostgreSQL's SQLSTATE when max_connections is reached


@dataclass(frozen=True)
class StoreOptions:
    """How one process uses the database. Each process has its own pool, so PostgreSQL sees at most
    processes x (pool_size + max_overflow) connections from troupe; keep that under max_connections."""

    pool_size: int = 1
    max_overflow: int = 0
    pool_timeout_s: float = 10.0
    pool_recycle_s: float = 1800.0
    application_name: str = "troupe"  # what pg_stat_activity shows for this process's connections
    seen_events_ttl_s: float = 86_400.0
    seen_events_max_rows: int = 500_000
    history_keep_days: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings, role: str) -> StoreOptions:
        return cls(
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
            pool_timeout_s=settings.db_pool_timeout_s,
            pool_recycle_s=settings.db_pool_recycle_s,
            application_name=f"troupe-{role}"[:63],
            seen_events_ttl_s=settings.seen_events_ttl_s,
            seen_events_max_rows=settings.seen_events_max_rows,
            history_keep_days=settings.history_keep_days,
        )


class _Pool(AsyncAdaptedQueuePool):
    """A pool whose wait for a free connection ends in troupe's StoreUnavailable, not SQLAlchemy's timeout."""

    def _do_get(self) -> ConnectionPoolEntry:
        try:
            return super()._do_get()
        except PoolTimeout:
            raise StoreUnavailable(
                f"The database is busy: no connection came free within {self._timeout:.0f} s "
                f"(this process may hold {self.size()} + {self._max_overflow}; see TROUPE_DB_POOL_SIZE)"
            ) from None
        except (TimeoutError, OSError) as exc:  # a new connection the server did not take in time, or refused
            raise StoreUnavailable(f"The database is not answering: {type(exc).__name__}") from None


def _refused_for_load(context: ExceptionContext) -> BaseException | None:
    # the server at max_connections: a clear 'busy' instead of a driver error (and no retrying into it)
    if getattr(context.original_exception, "sqlstate", None) == TOO_MANY_CONNECTIONS:
        return StoreUnavailable("The database is busy: it has no connection to spare (max_connections reached)")
    return None


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # several actor processes share one SQLite file: WAL lets readers and one writer work together
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _alembic_config(connection: Any) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def _at_head(connection: Any, config: Any) -> bool:
    from alembic.migration import MigrationContext
    from alembic.script import ScriptDirectory

    heads = set(ScriptDirectory.from_config(config).get_heads())
    return set(MigrationContext.configure(connection).get_current_heads()) == heads


def run_migrations(connection: Any) -> bool:
    """Alembic upgrade to head on an open (sync-facing) connection, once per deployment however many
    processes start together: a schema already at head is left alone without waiting; otherwise, on
    PostgreSQL, the upgrade runs under an advisory lock held to the end of the caller's transaction, and
    whoever gets it second finds the schema at head (SQLite's lock is a file: see `_sqlite_migration_lock`).
    Returns True if this call upgraded the schema."""
    from alembic import command

    config = _alembic_config(connection)
    if _at_head(connection, config):
        return False
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        if _at_head(connection, config):
            return False
    log.info("migrating the store's schema to head")
    command.upgrade(config, "head")
    return True


@asynccontextmanager
async def _sqlite_migration_lock(url: str) -> AsyncIterator[None]:
    """An exclusive lock file beside a SQLite database, held over a migration and its commit (SQLite's
    DDL is not transactional here, so two processes migrating at once would both create the tables)."""
    database = make_url(url).database
    if not database or database == ":memory:":
        yield
        return
    held = os.open(f"{database}.migrate-lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        await asyncio.to_thread(fcntl.flock, held, fcntl.LOCK_EX)  # released when the file closes
        yield
    finally:
        os.close(held)


def _reading(engine: Engine, work: Any, *args: Any) -> Any:
    with engine.connect() as conn:
        return work(conn, *args)


def _writing(engine: Engine, work: Any, *args: Any) -> Any:
    with engine.begin() as conn:
        return work(conn, *args)


class StoreBase:
    def __init__(self, engine: AsyncEngine, url: str, options: StoreOptions) -> None:
        self.engine = engine
        self._url = url
        self.options = options
        self.sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._is_sqlite = url.startswith("sqlite")
        self._writer: Engine | None = None
        self.migrated = False  # whether opening this store upgraded the schema

    @property
    def url_redacted(self) -> str:
        return redact_url(self._url)

    @classmethod
    async def open_for(cls, settings: Settings, role: str, *, migrate: bool = False) -> Self:
        """The store as `settings` configure it, for a process of kind `role` (door, session, ...)."""
        return await cls.open(
            settings.resolved_database_url, migrate=migrate, options=StoreOptions.from_settings(settings, role)
        )

    @classmethod
    async def open(cls, url: str, *, migrate: bool = True, options: StoreOptions | None = None) -> Self:
        options = options or StoreOptions()
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            path = url.split(":///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": 10}
        elif url.startswith("postgresql"):
            # a PostgreSQL connection can die with its server (pre-ping); a SQLite file cannot
            kwargs.update(
                poolclass=_Pool,
                pool_size=options.pool_size,
                max_overflow=options.max_overflow,
                pool_timeout=options.pool_timeout_s,
                pool_recycle=options.pool_recycle_s,
                pool_pre_ping=True,
                connect_args={"timeout": 5, "server_settings": {"application_name": options.application_name}},
            )
        try:
            engine = create_async_engine(url, **kwargs)
        except Exception as exc:
            raise StoreUnavailable(f"Cannot use the database at {redact_url(url)}: {exc}") from None
        if url.startswith("sqlite"):
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        else:
            event.listen(engine.sync_engine, "handle_error", _refused_for_load)
        store = cls(engine, url, options)
        locked: AbstractAsyncContextManager[None] = nullcontext()
        if migrate and url.startswith("sqlite"):
            locked = _sqlite_migration_lock(url)
        try:
            async with asyncio.timeout(60 if migrate else 30), locked:
                async with engine.begin() as conn:
                    if migrate:
                        store.migrated = await conn.run_sync(run_migrations)
                    else:
                        await conn.execute(select(1))
        except Exception as exc:
            await engine.dispose()
            reason = str(getattr(exc, "orig", None) or exc).splitlines()[0] if str(exc) else type(exc).__name__
            reason = reason.replace(url, redact_url(url))
            raise StoreUnavailable(f"Cannot reach the database at {redact_url(url)}: {reason}") from None
        return store

    async def close(self) -> None:
        await self.engine.dispose()
        if self._writer is not None:
            self._writer.dispose()

    async def ping(self) -> None:
        try:
            async with self.engine.connect() as conn:
                await conn.execute(select(1))
        except Exception as exc:
            raise StoreUnavailable(
                f"The database at {self.url_redacted} is not answering: {type(exc).__name__}"
            ) from None

    async def _read(self, work: Any, *args: Any) -> Any:
        """`work(conn, *args)` on a plain connection: on SQLite in a thread beside the event loop (a
        query on a caller's path is cheaper there than through aiosqlite), else through the async engine."""
        writer = self._sqlite_writer()
        if writer is not None:
            return await asyncio.to_thread(_reading, writer, work, *args)
        async with self.engine.connect() as conn:
            return await conn.run_sync(work, *args)

    async def _write(self, work: Any, *args: Any) -> Any:
        """`work(conn, *args)` in one transaction: on SQLite one trip to its writer thread, else through
        the async engine; retried while the database is busy."""
        attributes = {"db.system.name": self.engine.dialect.name, "db.operation.name": work.__name__.lstrip("_")}
        with tracing.span("store.write", kind=SpanKind.CLIENT, attributes=attributes):
            return await self._write_retried(work, *args)

    async def _write_retried(self, work: Any, *args: Any) -> Any:
        writer = self._sqlite_writer()
        for attempt in range(20):
            try:
                if writer is not None:
                    return await asyncio.to_thread(_writing, writer, work, *args)
                async with self.engine.begin() as conn:
                    return await conn.run_sync(work, *args)
            except OperationalError:
                if attempt == 19:
                    raise
                await asyncio.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    def _sqlite_writer(self) -> Engine | None:
        """A plain (thread-side) engine on the same SQLite file, for the writes on a caller's turn."""
        if not self._is_sqlite or ":memory:" in self._url:
            return None
        if self._writer is None:
            url = make_url(self._url).set(drivername="sqlite")
            self._writer = create_engine(url, connect_args={"timeout": 10, "check_same_thread": False})
            event.listen(self._writer, "connect", _sqlite_pragmas)
        return self._writer
