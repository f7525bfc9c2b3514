"""The suppression list: addresses that must never be mailed again, kept by hash."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session

from mailer.db import address_hash, normalize_email
from mailer.models import Suppression, SuppressionReason


def suppress_address(
    session: Session,
    email: str,
    reason: SuppressionReason,
    source: str,
    ip: str | None = None,
    user_agent: str | None = None,
) -> tuple[Suppression, bool]:
    """Suppress an address; returns the entry and whether it is new. Repeating it is harmless."""
    digest = address_hash(email)
    existing = session.scalar(sa.select(Suppression).where(Suppression.address_hash == digest))
    if existing is not None:
        return existing, False
    entry = Suppression(
        address_hash=digest,
        email=normalize_email(email),
        reason=reason,
        source=source,
        ip=ip,
        user_agent=user_agent,
    )
    session.add(entry)
    session.flush()
    return entry, True


def is_suppressed(session: Session, email: str) -> bool:
    """True when the address (or its erased hash) is on the suppression list."""
    return bool(
        session.scalar(sa.select(sa.literal(True)).where(Suppression.address_hash == address_hash(email)))
    )


def suppressed_hashes(session: Session, hashes: Iterable[str]) -> set[str]:
    """Which of these address hashes are suppressed; one query for a whole batch."""
    wanted = list(hashes)
    if not wanted:
        return set()
    rows = session.scalars(sa.select(Suppression.address_hash).where(Suppression.address_hash.in_(wanted)))
    return set(rows)


def list_suppressions(session: Session) -> Sequence[Suppression]:
    """Every suppression, newest first."""
    return session.scalars(sa.select(Suppression).order_by(Suppression.created_at.desc(), Suppression.id.desc())).all()
