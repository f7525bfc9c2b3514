"""privacy: where a double opt-in confirmation came from (IP and user agent)

Revision ID: 0005_privacy
Revises: 0004_inbound
Create Date: 2026-11-25 10:20:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_privacy"
down_revision: str | None = "0004_inbound"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # the confirmation click is the proof of consent on a double opt-in list; the original
    # consent_ip/consent_user_agent (say, from an import) are kept beside it, not overwritten
    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("confirmed_ip", sa.String(length=45), nullable=True))
        batch_op.add_column(sa.Column("confirmed_user_agent", sa.String(length=500), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        batch_op.drop_column("confirmed_user_agent")
        batch_op.drop_column("confirmed_ip")
