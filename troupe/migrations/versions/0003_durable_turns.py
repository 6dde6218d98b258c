"""durable turns: messages carry their turn id and whether the reply was cut off; call ids with expiry

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("turn_id", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("interrupted", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.create_index("ix_messages_turn_id", ["session_id", "turn_id"])
    op.create_table(
        "call_ids",
        sa.Column("call_id", sa.String(length=160), nullable=False),
        sa.Column("caller_id", sa.String(length=160), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("call_id"),
    )


def downgrade() -> None:
    op.drop_table("call_ids")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_turn_id")
        batch_op.drop_column("interrupted")
        batch_op.drop_column("turn_id")
