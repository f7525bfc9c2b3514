"""The suppression list: addresses that must never be mailed again, kept by hash."""

from __future__ import annotations

import datetime as dt
import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session

from mailer.audit import insert_event, record_event
from mailer.consent import request_origin
from mailer.db import address_hash, normalize_email
from mailer.errors import InvalidInputError, NotFoundError, SuppressedError, check_unicode
from mailer.models import Suppression, SuppressionReason, utcnow

# the widths of the columns these values land in
_MAX_SOURCE = 100
_MAX_REASON = 1000

_SUPPRESSIONS = cast(sa.Table, Suppression.__table__)
# one INSERT that yields to an existing entry: no read first, no savepoint, and no race between
# two writers on PostgreSQL (a select-then-insert there lets both insert, and one fails);
# RETURNING says whether it inserted, where psycopg's rowcount for it is -1; built once per
# dialect, so a one-click POST pays for executing it, not for constructing it
_INSERT_SUPPRESSION: dict[str, sa.Insert] = {}
_DIALECTS_WITH_ON_CONFLICT = ("sqlite", "postgresql")


def _insert_statement(dialect: str) -> sa.Insert | None:
    if dialect not in _DIALECTS_WITH_ON_CONFLICT:
        return None
    if dialect not in _INSERT_SUPPRESSION:
        # the dialect's module loads only for the database in use: a bounce piped into SQLite
        # does not pay for PostgreSQL's (and its asyncio driver's) imports
        module = importlib.import_module(f"sqlalchemy.dialects.{dialect}")
        _INSERT_SUPPRESSION[dialect] = (module.insert(_SUPPRESSIONS)
                                        .on_conflict_do_nothing(index_elements=["address_hash"])
                                        .returning(_SUPPRESSIONS.c.id))
    return _INSERT_SUPPRESSION[dialect]


@dataclass(frozen=True)
class AuditNote:
    """How the audit trail tells of a suppression: who did it and why, in the caller's words."""

    actor: str  # "cli:<user>", "web", "inbound", "mailer"
    reason: str  # why, as a person reads it in `audit ls`
    action: str = "suppress"  # "unsubscribe" when a person opted out
    detail: dict[str, Any] = field(default_factory=dict)
    at: dt.datetime | None = None  # when, if the caller's other rows of the act share a moment


def suppress(
    session: Session,
    email: str,
    reason: SuppressionReason,
    source: str,
    audit: AuditNote | None,
    ip: str | None = None,
    user_agent: str | None = None,
) -> bool:
    """Suppress an address in the caller's transaction and record it in the audit trail;
    True when this call added the entry.

    An address already suppressed keeps its first entry (and reason), and the trail gets no
    second event. Safe to call from two transactions at once: the second waits for the first
    and adds nothing. The reason ERASED keeps only the hash of the address. `audit` is None
    only where the caller's own event tells of a larger act the suppression is part of (an
    erasure, a rectification).
    """
    erased = reason is SuppressionReason.ERASED
    check_unicode("the reason", source)
    ip, user_agent = (None, None) if erased else request_origin(ip, user_agent)
    values = {
        "address_hash": address_hash(email),
        "email": None if erased else normalize_email(email),
        "reason": reason,
        "source": source[:_MAX_SOURCE],
        "ip": ip,
        "user_agent": user_agent,
        "created_at": audit.at if audit is not None and audit.at else utcnow(),
    }
    if not _insert_suppression(session, values):
        return False
    if audit is not None:
        # the privacy policy promises a record of every change to whom we may mail
        insert_event(session, audit.action, audit.actor, subject=email, reason=audit.reason[:_MAX_REASON],
                     detail=audit.detail, at=audit.at)
    return True


def _insert_suppression(session: Session, values: dict[str, Any]) -> bool:
    statement = _insert_statement(session.get_bind().dialect.name)
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
    """Suppress an address without an audit event (seeding demo data); the entry and whether it is new."""
    created = suppress(session, email, reason, source, None, ip, user_agent)
    entry = find_suppression(session, email)
    assert entry is not None  # just added, or there before
    return entry, created


def find_suppression(session: Session, email: str) -> Suppression | None:
    """The suppression entry for an address (or its erased hash), or None."""
    return session.scalar(sa.select(Suppression).where(Suppression.address_hash == address_hash(email)))


def is_suppressed(session: Session, email: str) -> bool:
    """True when the address (or its erased hash) is on the suppression list."""
    return bool(
        session.scalar(sa.select(sa.literal(True)).where(Suppression.address_hash == address_hash(email)))
    )


def list_suppressions(session: Session) -> Sequence[Suppression]:
    """Every suppression, newest first."""
    return session.scalars(sa.select(Suppression).order_by(Suppression.created_at.desc(), Suppression.id.desc())).all()


def unsuppress(session: Session, email: str, reason: str, actor: str, erased: bool = False) -> Suppression:
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
    entry = find_suppression(session, email)
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
