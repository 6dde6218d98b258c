"""layered memory: each memory has a layer, a channel, an importance, an embedding and the memory that
superseded it; full-text search over memories (SQLite FTS5, PostgreSQL tsvector); core blocks

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 21:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_LAYER_OF_KIND = """
UPDATE memories SET layer = CASE
    WHEN kind = 'summary' THEN 'episode'
    WHEN kind = 'reflection' OR subject = 'self' OR subject LIKE 'life:%' THEN 'knowledge'
    ELSE 'profile' END
"""

_SQLITE_FTS = [
    "CREATE VIRTUAL TABLE memories_fts USING fts5(content, content='memories', content_rowid='id',"
    " tokenize='porter unicode61')",
    "INSERT INTO memories_fts(rowid, content) SELECT id, content FROM memories",
    "CREATE TRIGGER memories_fts_insert AFTER INSERT ON memories BEGIN"
    " INSERT INTO memories_fts(rowid, content) VALUES (new.id, new.content); END",
    "CREATE TRIGGER memories_fts_delete AFTER DELETE ON memories BEGIN"
    " INSERT INTO memories_fts(memories_fts, rowid, content) VALUES ('delete', old.id, old.content); END",
    "CREATE TRIGGER memories_fts_update AFTER UPDATE OF content ON memories BEGIN"
    " INSERT INTO memories_fts(memories_fts, rowid, content) VALUES ('delete', old.id, old.content);"
    " INSERT INTO memories_fts(rowid, content) VALUES (new.id, new.content); END",
]

_POSTGRES_FTS = [
    "ALTER TABLE memories ADD COLUMN search tsvector GENERATED ALWAYS AS (to_tsvector('english', content)) STORED",
    "CREATE INDEX ix_memories_search ON memories USING gin (search)",
]


def upgrade() -> None:
    with op.batch_alter_table("memories", schema=None) as batch_op:
        batch_op.add_column(sa.Column("layer", sa.String(length=16), nullable=False, server_default="profile"))
        batch_op.add_column(sa.Column("channel", sa.String(length=16), nullable=False, server_default=""))
        batch_op.add_column(sa.Column("importance", sa.Float(), nullable=False, server_default="0.5"))
        batch_op.add_column(sa.Column("embedding", sa.LargeBinary(), nullable=True))
        batch_op.add_column(sa.Column("superseded_by", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("superseded_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index("ix_memories_recall", ["persona", "subject", "superseded_by"])
    op.execute(_LAYER_OF_KIND)
    op.create_table(
        "memory_blocks",
        sa.Column("persona", sa.String(length=40), nullable=False),
        sa.Column("subject", sa.String(length=200), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("persona", "subject"),
    )
    for statement in _POSTGRES_FTS if op.get_bind().dialect.name == "postgresql" else _SQLITE_FTS:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX ix_memories_search")
        op.execute("ALTER TABLE memories DROP COLUMN search")
    else:
        for name in ("insert", "delete", "update"):
            op.execute(f"DROP TRIGGER memories_fts_{name}")
        op.execute("DROP TABLE memories_fts")
    op.drop_table("memory_blocks")
    with op.batch_alter_table("memories", schema=None) as batch_op:
        batch_op.drop_index("ix_memories_recall")
        for column in ("superseded_at", "superseded_by", "embedding", "importance", "channel", "layer"):
            batch_op.drop_column(column)
