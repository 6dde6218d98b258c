"""life loops: schedule overrides, news read, posts, run finish times

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 11:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("life_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "schedules",
        sa.Column("persona", sa.String(length=40), nullable=False),
        sa.Column("activity", sa.String(length=32), nullable=False),
        sa.Column("cron_expression", sa.String(length=120), nullable=True),
        sa.Column("is_paused", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("persona", "activity"),
    )
    op.create_table(
        "news_read",
        sa.Column("persona", sa.String(length=40), nullable=False),
        sa.Column("item_id", sa.String(length=32), nullable=False),
        sa.Column("title", sa.String(length=400), nullable=False),
        sa.Column("url", sa.String(length=1000), nullable=False),
        sa.Column("take", sa.Text(), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("read_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("persona", "item_id"),
    )
    op.create_table(
        "posts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("persona", sa.String(length=40), nullable=False),
        sa.Column("text", sa.String(length=400), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("pending_targets", sa.String(length=64), nullable=False),
        sa.Column("delivered_targets", sa.String(length=64), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.String(length=400), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("posts", schema=None) as batch_op:
        batch_op.create_index("ix_posts_persona_created", ["persona", "created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("posts", schema=None) as batch_op:
        batch_op.drop_index("ix_posts_persona_created")
    op.drop_table("posts")
    op.drop_table("news_read")
    op.drop_table("schedules")
    with op.batch_alter_table("life_runs", schema=None) as batch_op:
        batch_op.drop_column("finished_at")
