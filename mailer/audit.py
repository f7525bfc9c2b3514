"""The audit trail: who opted out, erased, exported or was sent a notice, when and why."""

from __future__ import annotations

import datetime as dt
import getpass
from collections.abc import Sequence
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session

from mailer.errors import check_unicode
from mailer.models import AuditEvent, utcnow


def cli_actor() -> str:
    """The actor recorded for a command run at a terminal."""
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):
        return "cli"


def record_event(
    session: Session,
    action: str,
    actor: str,
    subject: str = "",
    reason: str = "",
    detail: dict[str, Any] | None = None,
) -> AuditEvent:
    """Add one event to the trail in the caller's transaction; InvalidInputError for a reason not UTF-8."""
    check_unicode("the reason", reason)
    event = AuditEvent(action=action, actor=actor, subject=subject, reason=reason, detail=detail or {})
    session.add(event)
    return event


# the row record_event adds, as one prepared INSERT: no ORM object and no flush, for the paths
# that run once per web request (a one-click opt-out)
_INSERT_EVENT = sa.insert(cast(sa.Table, AuditEvent.__table__))


def insert_event(
    session: Session,
    action: str,
    actor: str,
    subject: str = "",
    reason: str = "",
    detail: dict[str, Any] | None = None,
    at: dt.datetime | None = None,
) -> None:
    """Write one event to the trail now, in the caller's transaction; `at` defaults to now.

    Raises InvalidInputError when the reason is not valid UTF-8 text.
    """
    check_unicode("the reason", reason)
    session.execute(_INSERT_EVENT, {"at": at or utcnow(), "action": action, "actor": actor,
                                    "subject": subject, "reason": reason, "detail": detail or {}})


def list_events(session: Session, since: dt.datetime | None = None) -> Sequence[AuditEvent]:
    """Events in time order, optionally from `since` on."""
    query = sa.select(AuditEvent).order_by(AuditEvent.at, AuditEvent.id)
    if since is not None:
        query = query.where(AuditEvent.at >= since)
    return session.scalars(query).all()
