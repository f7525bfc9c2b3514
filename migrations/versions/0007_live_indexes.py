"""live-work indexes: deliveries still to send or in flight, apart from the finished history

Revision ID: 0007_live_indexes
Revises: 0006_policy_blocks
Create Date: 2026-11-29 17:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_live_indexes"
down_revision: str | None = "0006_policy_blocks"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# partial indexes: a delivery is in one of them only while it is pending, deferred or in flight,
# so claims, heartbeats and abandoned-claim checks do not slow down as finished deliveries pile up
# (a migration never imports the models: the names and conditions are spelled out here)
LIVE_INDEXES = (
    ("ix_deliveries_pending", "pending", ["campaign_id", "next_attempt_at"]),
    ("ix_deliveries_deferred", "deferred", ["campaign_id", "next_attempt_at"]),
    ("ix_deliveries_in_flight", "sending", ["claimed_by", "claimed_at"]),
)


def upgrade() -> None:
    for name, state, columns in LIVE_INDEXES:
        where = sa.text(f"state = '{state}'")
        op.create_index(name, "deliveries", columns, unique=False,
                        postgresql_where=where, sqlite_where=where)


def downgrade() -> None:
    for name, _state, _columns in reversed(LIVE_INDEXES):
        op.drop_index(name, table_name="deliveries")
