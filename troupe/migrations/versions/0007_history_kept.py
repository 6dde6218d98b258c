"""history kept for a while, not for ever: what each agent spent in process rows that have since gone
(so a budget still counts them), and indexes for the sweep by age of finished processes, life runs and
articles read

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 05:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "spend_carried",
        sa.Column("agent", sa.String(length=40), nullable=False),
        sa.Column("estimated_cost", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("agent"),
    )
    op.create_index("ix_processes_ended", "processes", ["ended_at"])
    op.create_index("ix_life_runs_triggered", "life_runs", ["triggered_at"])
    op.create_index("ix_news_read_at", "news_read", ["read_at"])


def downgrade() -> None:
    op.drop_index("ix_news_read_at", table_name="news_read")
    op.drop_index("ix_life_runs_triggered", table_name="life_runs")
    op.drop_index("ix_processes_ended", table_name="processes")
    op.drop_table("spend_carried")
