"""The suppression list's one home: suppress() and unsuppress() change it and tell the audit trail once."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from mailer.audit import list_events
from mailer.db import Database, address_hash
from mailer.errors import NotFoundError
from mailer.models import AuditEvent, Suppression, SuppressionReason
from mailer.recipients.suppression import (
    AuditNote,
    find_suppression,
    is_suppressed,
    list_suppressions,
    suppress,
    unsuppress,
)


def _trail(database: Database) -> list[tuple[str, str, str, str]]:
    with database.session() as session:
        return [(e.action, e.actor, e.subject, e.reason) for e in list_events(session)]


def test_suppress_adds_the_entry_and_one_audit_event(database: Database) -> None:
    with database.session() as session:
        added = suppress(session, "Ana@Example.com", SuppressionReason.MANUAL, "cli: by phone",
                         AuditNote("cli:op", "asked by phone", detail={"ticket": 7}),
                         ip="203.0.113.9", user_agent="x" * 900)
    assert added is True
    with database.session() as session:
        [entry] = list_suppressions(session)
        assert (entry.email, entry.reason, entry.source, entry.ip) == (
            "ana@example.com", SuppressionReason.MANUAL, "cli: by phone", "203.0.113.9")
        assert entry.user_agent == "x" * 500  # cut to its column, never refused
        [event] = session.scalars(sa.select(AuditEvent)).all()
        assert (event.action, event.actor, event.subject, event.reason, event.detail) == (
            "suppress", "cli:op", "Ana@Example.com", "asked by phone", {"ticket": 7})


def test_suppressing_again_keeps_the_first_entry_and_adds_no_event(database: Database) -> None:
    with database.session() as session:
        suppress(session, "ana@example.com", SuppressionReason.HARD_BOUNCE, "smtp 550",
                 AuditNote("mailer", "hard bounce: 550 no such user"))
    with database.session() as session:
        again = suppress(session, "ANA@example.com", SuppressionReason.COMPLAINT, "complaint",
                         AuditNote("inbound", "spam complaint"))
    assert again is False
    with database.session() as session:
        [entry] = list_suppressions(session)
        assert entry.reason is SuppressionReason.HARD_BOUNCE
    assert _trail(database) == [("suppress", "mailer", "ana@example.com", "hard bounce: 550 no such user")]


def test_an_erasure_keeps_only_the_hash(database: Database) -> None:
    with database.session() as session:
        suppress(session, "ana@example.com", SuppressionReason.ERASED, "erasure", None,
                 ip="203.0.113.9", user_agent="Firefox")
    with database.session() as session:
        entry = find_suppression(session, "Ana@example.com")
        assert entry is not None
        assert (entry.address_hash, entry.email, entry.ip, entry.user_agent) == (
            address_hash("ana@example.com"), None, None, None)
    assert _trail(database) == []  # the caller's erase event tells of it


def test_unsuppress_removes_the_entry_with_one_event(database: Database) -> None:
    with database.session() as session:
        suppress(session, "ana@example.com", SuppressionReason.MANUAL, "cli", AuditNote("cli:op", "manual"))
    with database.session() as session:
        unsuppress(session, "ana@example.com", "forged  complaint,\nticket 812", "cli:op")
    with database.session() as session:
        assert not is_suppressed(session, "ana@example.com")
        assert find_suppression(session, "ana@example.com") is None
        with pytest.raises(NotFoundError, match=re.escape("ana@example.com is not suppressed")):
            unsuppress(session, "ana@example.com", "again", "cli:op")
    assert _trail(database)[1:] == [("unsuppress", "cli:op", "ana@example.com", "forged complaint, ticket 812")]


@pytest.fixture
def postgres_database(postgres_url: str) -> Iterator[Database]:
    db = Database(postgres_url)
    db.upgrade()
    yield db
    db.dispose()


def _waiting_for_a_lock(database: Database) -> bool:
    with database.engine.connect() as conn:
        return bool(conn.scalar(sa.text("SELECT count(*) FROM pg_locks WHERE NOT granted")))


def test_two_writers_at_once_add_one_entry_and_one_event(postgres_database: Database) -> None:
    database = postgres_database
    second: list[bool] = []
    errors: list[BaseException] = []

    def suppress_in_another_transaction() -> None:
        try:
            with database.session() as session:
                second.append(suppress(session, "ana@example.com", SuppressionReason.COMPLAINT, "complaint",
                                       AuditNote("inbound", "spam complaint")))
        except BaseException as exc:  # the assertion below names it
            errors.append(exc)

    with database.session() as session:
        assert suppress(session, "ana@example.com", SuppressionReason.UNSUBSCRIBED, "one-click",
                        AuditNote("web", "one-click", action="unsubscribe"))
        racer = threading.Thread(target=suppress_in_another_transaction)
        racer.start()
        # the second INSERT waits on the first's uncommitted row: commit only once it does
        deadline = time.monotonic() + 10
        while not _waiting_for_a_lock(database) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _waiting_for_a_lock(database)
    racer.join(timeout=10)
    assert errors == [] and second == [False]
    with database.session() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Suppression)) == 1
        assert [e.action for e in list_events(session)] == ["unsubscribe"]
