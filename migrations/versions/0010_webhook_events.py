"""webhook events: the one-time tokens of signed provider webhooks, so a replay is refused

Revision ID: 0010_webhook_events
Revises: 0006_policy_blocks
Create Date: 2026-11-29 17:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_webhook_events"
down_revision: str | None = "0009_identity_links"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "webhook_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("provider", sa.String(length=20), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("seen_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_webhook_tokens_token_hash")),
    )
    with op.batch_alter_table("webhook_tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_webhook_tokens_seen_at"), ["seen_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("webhook_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_webhook_tokens_seen_at"))
    op.drop_table("webhook_tokens")
