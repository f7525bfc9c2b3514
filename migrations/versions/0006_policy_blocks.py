"""policy blocks: counted per campaign, and weighed from the campaign's last resume

Revision ID: 0006_policy_blocks
Revises: 0005_privacy
Create Date: 2026-11-29 14:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_policy_blocks"
down_revision: str | None = "0005_privacy"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # bounce_events.kind is a VARCHAR(20) without a CHECK constraint on SQLite and PostgreSQL
    # alike (no native enum type), so the new kind "policy" needs no ALTER TYPE; what it needs
    # is a quick count of one campaign's policy blocks after every batch that had one
    with op.batch_alter_table("bounce_events", schema=None) as batch_op:
        batch_op.create_index("ix_bounce_events_campaign_kind", ["campaign_id", "kind"], unique=False)
    with op.batch_alter_table("campaigns", schema=None) as batch_op:
        batch_op.add_column(sa.Column("policy_counted_from", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("campaigns", schema=None) as batch_op:
        batch_op.drop_column("policy_counted_from")
    # older code's BounceKind has no member for these rows and could not load them
    op.execute("DELETE FROM bounce_events WHERE kind = 'policy'")
    with op.batch_alter_table("bounce_events", schema=None) as batch_op:
        batch_op.drop_index("ix_bounce_events_campaign_kind")
