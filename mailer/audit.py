"""The audit trail: who opted out, erased, exported or was sent a notice, when and why."""

from __future__ import annotations

import datetime as dt
import getpass
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from mailer.models import AuditEvent


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
    """Add one event to the trail in the caller's transaction."""
    event = AuditEvent(action=action, actor=actor, subject=subject, reason=reason, detail=detail or {})
    session.add(event)
    return event


def list_events(session: Session, since: dt.datetime | None = None) -> Sequence[AuditEvent]:
    """Events in time order, optionally from `since` on."""
    query = sa.select(AuditEvent).order_by(AuditEvent.at, AuditEvent.id)
    if since is not None:
        query = query.where(AuditEvent.at >= since)
    return session.scalars(query).all()
