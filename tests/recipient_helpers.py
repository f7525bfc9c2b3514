"""Shared setup for the recipient-side tests: people on lists, their tokens, what was recorded."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from mailer.config import Config
from mailer.db import Database
from mailer.models import (
    AuditEvent,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    Suppression,
)
from mailer.recipients.lists import create_list, get_list
from mailer.recipients.subscribers import Consent, add_subscriber
from mailer.tokens import make_unsubscribe_token


@dataclass(frozen=True)
class Person:
    email: str
    subscriber_id: int
    list_ids: dict[str, int]

    def token(self, config: Config, list_name: str = "news", campaign_id: int | None = None) -> str:
        return make_unsubscribe_token(
            config.require_secret_keys(), self.subscriber_id, self.list_ids[list_name], campaign_id
        )


def make_lists(database: Database, *names: str) -> dict[str, int]:
    with database.session() as session:
        return {name: create_list(session, name, title=name.title()).id for name in names}


def add_person(database: Database, email: str, *lists: str) -> Person:
    """Subscribe `email` to each named list (they must exist)."""
    list_ids: dict[str, int] = {}
    subscriber_id = 0
    with database.session() as session:
        for name in lists:
            subscriber, _outcome = add_subscriber(session, email, name, Consent(source="test"))
            assert subscriber is not None
            subscriber_id = subscriber.id
            list_ids[name] = get_list(session, name).id
    return Person(email, subscriber_id, list_ids)


def suppressions(database: Database) -> list[Suppression]:
    with database.session() as session:
        return list(session.scalars(sa.select(Suppression).order_by(Suppression.id)))


def statuses(database: Database, person: Person) -> dict[str, SubscriptionStatus]:
    """The person's status on each list, by list name."""
    with database.session() as session:
        rows = session.scalars(
            sa.select(Subscription).where(Subscription.subscriber_id == person.subscriber_id)
        )
        return {row.mailing_list.name: row.status for row in rows}


def audit_events(database: Database, action: str = "unsubscribe") -> list[AuditEvent]:
    with database.session() as session:
        return list(session.scalars(sa.select(AuditEvent).where(AuditEvent.action == action)))


def erase(database: Database, person: Person) -> None:
    """Delete the person's profile, as an erasure does (the suppression hash stays)."""
    with database.session() as session:
        subscriber = session.get(Subscriber, person.subscriber_id)
        assert subscriber is not None
        session.delete(subscriber)


def snapshot(database: Database) -> tuple[int, int, int, list[str]]:
    """Counts that any change by an unsubscribe would move."""
    with database.session() as session:
        return (
            session.scalar(sa.select(sa.func.count()).select_from(Suppression)) or 0,
            session.scalar(sa.select(sa.func.count()).select_from(AuditEvent)) or 0,
            session.scalar(sa.select(sa.func.count()).select_from(Subscriber)) or 0,
            sorted(s.status.value for s in session.scalars(sa.select(Subscription))),
        )
