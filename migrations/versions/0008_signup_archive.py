"""web sign-up consent (page and wording) and the public campaign archive

Revision ID: 0008_signup_archive
Revises: 0006_policy_blocks
Create Date: 2026-11-29 17:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_signup_archive"
down_revision: str | None = "0007_live_indexes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("mailing_lists", schema=None) as batch_op:
        batch_op.add_column(sa.Column("consent_text", sa.Text(), nullable=False, server_default=""))
    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("consent_page", sa.String(length=2000), nullable=True))
        batch_op.add_column(sa.Column("consent_text", sa.Text(), nullable=True))
    with op.batch_alter_table("campaigns", schema=None) as batch_op:
        batch_op.add_column(sa.Column("archived", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("campaigns", schema=None) as batch_op:
        batch_op.drop_column("archived")
    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        batch_op.drop_column("consent_text")
        batch_op.drop_column("consent_page")
    with op.batch_alter_table("mailing_lists", schema=None) as batch_op:
        batch_op.drop_column("consent_text")
