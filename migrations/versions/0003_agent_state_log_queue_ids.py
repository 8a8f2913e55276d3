"""agent_state_log.queue_ids: the queues an agent served from each row on.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28

A restarted controller logs each agent back in to the queues it had chosen
(core.agent.restoration); `tenant_ids` alone cannot say which queues those
were. Rows written before this revision get '[]': "every membership".
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A plain ADD COLUMN with a constant default: no table copy on either dialect.
    op.add_column(
        "agent_state_log",
        sa.Column(
            "queue_ids",
            sa.JSON().with_variant(postgresql.JSONB(), "postgresql"),
            server_default=sa.text("'[]'"),
            nullable=False,
        ),
    )


def downgrade() -> None:
    with op.batch_alter_table("agent_state_log") as batch:
        batch.drop_column("queue_ids")
