"""pending deliveries in id order: a sender resumes its claims after the last id it took

Revision ID: 0011_pending_by_id
Revises: 0010_webhook_events
Create Date: 2026-11-29 19:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011_pending_by_id"
down_revision: str | None = "0010_webhook_events"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# a pending delivery has no next_attempt_at (it is due at once), so ordering the queue by it said
# nothing; by id, a sender's claim starts its index scan after the last id it claimed and never
# walks the entries its earlier claims left dead until the next vacuum
WHERE = sa.text("state = 'pending'")


def upgrade() -> None:
    op.drop_index("ix_deliveries_pending", table_name="deliveries")
    op.create_index("ix_deliveries_pending", "deliveries", ["campaign_id", "id"], unique=False,
                    postgresql_where=WHERE, sqlite_where=WHERE)


def downgrade() -> None:
    op.drop_index("ix_deliveries_pending", table_name="deliveries")
    op.create_index("ix_deliveries_pending", "deliveries", ["campaign_id", "next_attempt_at"], unique=False,
                    postgresql_where=WHERE, sqlite_where=WHERE)
