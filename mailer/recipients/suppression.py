"""The suppression list: addresses that must never be mailed again, kept by hash."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from mailer.audit import record_event
from mailer.db import address_hash, normalize_email
from mailer.errors import InvalidInputError, NotFoundError, SuppressedError
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


def lift_suppression(session: Session, email: str, reason: str, actor: str, erased: bool = False) -> Suppression:
    """Let an address be mailed again, in the audit trail with the reason; returns the entry removed.

    An erased person's entry keeps only the hash of their address: lifting it needs `erased`,
    and its audit event names the hash, never the address. Raises InvalidInputError when the
    reason is empty, NotFoundError when the address is not suppressed, SuppressedError for an
    erasure without `erased`.
    """
    reason = " ".join(reason.split())
    if not reason:
        raise InvalidInputError("a reason is required: it goes into the audit trail")
    digest = address_hash(email)
    entry = session.scalar(sa.select(Suppression).where(Suppression.address_hash == digest))
    if entry is None:
        raise NotFoundError(f"{normalize_email(email)} is not suppressed")
    was_erased = entry.email is None
    if was_erased and not erased:
        # an erasure is a person's request to be forgotten and never mailed: naming the
        # address is not enough to undo it
        raise SuppressedError(f"{normalize_email(email)} was erased; only its hash is kept. "
                              "Lift it only with --erased and the person's renewed consent")
    record_event(session, "unsuppress", actor, subject=digest if was_erased else entry.email or digest,
                 reason=reason, detail={"was": entry.reason.value, "source": entry.source,
                                        "since": entry.created_at.isoformat()})
    session.delete(entry)
    session.flush()
    return entry
