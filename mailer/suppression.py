"""The suppression list: addresses that must never be mailed again, kept by hash."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from mailer.db import address_hash, normalize_email
from mailer.models import Suppression, SuppressionReason, utcnow

# the widths of the columns these values land in
_MAX_SOURCE = 100
_MAX_IP = 45
_MAX_USER_AGENT = 500

_SUPPRESSIONS = cast(sa.Table, Suppression.__table__)
# one INSERT that yields to an existing entry: no read first, no savepoint, and no race between
# two writers on PostgreSQL (a select-then-insert there lets both insert, and one fails);
# RETURNING says whether it inserted, where psycopg's rowcount for it is -1; built once, so a
# one-click POST pays for executing it, not for constructing it
_INSERT_SUPPRESSION = {
    "sqlite": sqlite_insert(_SUPPRESSIONS).on_conflict_do_nothing(index_elements=["address_hash"])
    .returning(_SUPPRESSIONS.c.id),
    "postgresql": postgresql_insert(_SUPPRESSIONS).on_conflict_do_nothing(index_elements=["address_hash"])
    .returning(_SUPPRESSIONS.c.id),
}


def add_suppression(
    session: Session,
    email: str,
    reason: SuppressionReason,
    source: str,
    ip: str | None = None,
    user_agent: str | None = None,
) -> bool:
    """Suppress an address in the caller's transaction; True when this call added the entry.

    An address already suppressed keeps its first entry (and reason). Safe to call from two
    transactions at once: the second waits for the first and adds nothing.
    """
    values = {
        "address_hash": address_hash(email),
        "email": normalize_email(email),
        "reason": reason,
        "source": source[:_MAX_SOURCE],
        "ip": ip[:_MAX_IP] if ip else None,
        "user_agent": user_agent[:_MAX_USER_AGENT] if user_agent else None,
        "created_at": utcnow(),
    }
    statement = _INSERT_SUPPRESSION.get(session.get_bind().dialect.name)
    if statement is None:
        # another database: read first (racy between writers, but correct alone)
        if session.scalar(sa.select(Suppression.id).where(Suppression.address_hash == values["address_hash"])):
            return False
        session.add(Suppression(**values))
        session.flush()
        return True
    return session.execute(statement, values).first() is not None


def suppress_address(
    session: Session,
    email: str,
    reason: SuppressionReason,
    source: str,
    ip: str | None = None,
    user_agent: str | None = None,
) -> tuple[Suppression, bool]:
    """Suppress an address; returns the entry and whether it is new. Repeating it is harmless."""
    created = add_suppression(session, email, reason, source, ip, user_agent)
    entry = session.scalar(sa.select(Suppression).where(Suppression.address_hash == address_hash(email)))
    assert entry is not None  # just added, or there before
    return entry, created


def is_suppressed(session: Session, email: str) -> bool:
    """True when the address (or its erased hash) is on the suppression list."""
    return bool(
        session.scalar(sa.select(sa.literal(True)).where(Suppression.address_hash == address_hash(email)))
    )


def list_suppressions(session: Session) -> Sequence[Suppression]:
    """Every suppression, newest first."""
    return session.scalars(sa.select(Suppression).order_by(Suppression.created_at.desc(), Suppression.id.desc())).all()
