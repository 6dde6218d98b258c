"""Alembic environment: troupe runs migrations itself at start-up, on the connection it hands over."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from troupe.store import Base
from troupe.store.schema import in_models

config = context.config
target_metadata = Base.metadata


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(
            connection=connection, target_metadata=target_metadata, render_as_batch=True, include_name=in_models
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    # `alembic` on the command line: a sync URL in sqlalchemy.url
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "sqlite:///troupe.db")
    with engine.connect() as conn:
        context.configure(
            connection=conn, target_metadata=target_metadata, render_as_batch=True, include_name=in_models
        )
        with context.begin_transaction():
            context.run_migrations()


run()
