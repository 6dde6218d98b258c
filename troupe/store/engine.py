"""The store's engine: opening it (SQLite pragmas, pool settings, Alembic migrations to head), the
plain SQLite writer engine, ping and close; StoreBase holds what every table group's mixin uses."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Self

from sqlalchemy import Engine, create_engine, event, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from troupe.config.settings import redact_url
from troupe.core.errors import StoreUnavailable

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # several actor processes share one SQLite file: WAL lets readers and one writer work together
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def run_migrations(connection: Any) -> None:
    """Alembic upgrade to head on an open (sync-facing) connection."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


class StoreBase:
    def __init__(self, engine: AsyncEngine, url: str) -> None:
        self.engine = engine
        self._url = url
        self.sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._is_sqlite = url.startswith("sqlite")
        self._writer: Engine | None = None

    @property
    def url_redacted(self) -> str:
        return redact_url(self._url)

    @classmethod
    async def open(cls, url: str, *, migrate: bool = True) -> Self:
        # a PostgreSQL connection can die with its server; a SQLite file cannot, so it skips the ping
        kwargs: dict[str, Any] = {"pool_pre_ping": not url.startswith("sqlite")}
        if url.startswith("sqlite"):
            path = url.split(":///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": 10}
        elif url.startswith("postgresql"):
            kwargs["connect_args"] = {"timeout": 5}
            kwargs.update(pool_size=5, max_overflow=5)
        try:
            engine = create_async_engine(url, **kwargs)
        except Exception as exc:
            raise StoreUnavailable(f"Cannot use the database at {redact_url(url)}: {exc}") from None
        if url.startswith("sqlite"):
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        store = cls(engine, url)
        try:
            async with asyncio.timeout(30):
                async with engine.begin() as conn:
                    if migrate:
                        await conn.run_sync(run_migrations)
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

    def _sqlite_writer(self) -> Engine | None:
        """A plain (thread-side) engine on the same SQLite file, for the writes on a caller's turn."""
        if not self._is_sqlite or ":memory:" in self._url:
            return None
        if self._writer is None:
            url = make_url(self._url).set(drivername="sqlite")
            self._writer = create_engine(url, connect_args={"timeout": 10, "check_same_thread": False})
            event.listen(self._writer, "connect", _sqlite_pragmas)
        return self._writer
