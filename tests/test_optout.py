"""The unsubscribe service itself: scopes, idempotence, races, and callers holding loaded rows."""

from __future__ import annotations

import threading
from dataclasses import replace

import sqlalchemy as sa
from recipient_helpers import (
    add_person,
    audit_events,
    erase,
    make_lists,
    snapshot,
    statuses,
    suppressions,
)

from mailer.config import Config, UnsubscribeScope
from mailer.db import Database
from mailer.models import Subscriber, SubscriptionStatus, SuppressionReason
from mailer.recipients.optout import OptOutSource, mask_email, unsubscribe
from mailer.recipients.suppression import suppress_address
from mailer.tokens import UnsubscribeClaim


def list_scope(config: Config) -> Config:
    return replace(config, unsubscribe=replace(config.unsubscribe, scope=UnsubscribeScope.LIST))


def test_mask_email() -> None:
    assert mask_email("ana.lima@example.com") == "a•••@example.com"
    assert mask_email("not-an-address") == "•••"


def test_scope_all_records_source_ip_and_user_agent_once(database: Database, config: Config) -> None:
    lists = make_lists(database, "news", "offers")
    ana = add_person(database, "ana@example.com", "news", "offers")
    claim = UnsubscribeClaim(ana.subscriber_id, lists["news"], 4)
    with database.session() as session:
        first = unsubscribe(session, config, claim, OptOutSource.PAGE, ip="192.0.2.1", user_agent="Firefox")
    with database.session() as session:
        again = unsubscribe(session, config, claim, OptOutSource.ONE_CLICK)
    assert first.changed and first.known and first.lists_left == ("News", "Offers")
    assert not again.changed and again.known and again.lists_left == ()
    [entry] = suppressions(database)
    assert (entry.reason, entry.source, entry.ip, entry.user_agent) == (
        SuppressionReason.UNSUBSCRIBED, "page", "192.0.2.1", "Firefox")
    [event] = audit_events(database)
    assert event.subject == "ana@example.com" and event.detail["campaign_id"] == 4


def test_scope_list_without_a_list_or_off_the_list_falls_back_to_all(database: Database, config: Config) -> None:
    lists = make_lists(database, "news", "offers")
    ana = add_person(database, "ana@example.com", "news")
    bob = add_person(database, "bob@example.com", "news")
    with database.session() as session:
        no_list = unsubscribe(session, list_scope(config), UnsubscribeClaim(ana.subscriber_id, None, None), "cli")
        off_list = unsubscribe(session, list_scope(config),
                               UnsubscribeClaim(bob.subscriber_id, lists["offers"], None), "cli")
    assert no_list.scope is UnsubscribeScope.ALL and off_list.scope is UnsubscribeScope.ALL
    assert len(suppressions(database)) == 2
    assert statuses(database, bob) == {"news": SubscriptionStatus.UNSUBSCRIBED}


def test_an_address_suppressed_for_another_reason_keeps_that_reason(database: Database, config: Config) -> None:
    make_lists(database, "news")
    ana = add_person(database, "ana@example.com", "news")
    with database.session() as session:
        suppress_address(session, "ana@example.com", SuppressionReason.MANUAL, "cli")
    with database.session() as session:
        result = unsubscribe(session, config, UnsubscribeClaim(ana.subscriber_id, None, None), "one-click")
    assert result.changed  # the subscription ended
    assert [s.reason for s in suppressions(database)] == [SuppressionReason.MANUAL]


def test_an_unknown_or_erased_subscriber_is_a_no_op(database: Database, config: Config) -> None:
    make_lists(database, "news")
    ana = add_person(database, "ana@example.com", "news")
    erase(database, ana)
    before = snapshot(database)
    with database.session() as session:
        for subscriber_id in (ana.subscriber_id, 424242):
            result = unsubscribe(session, config, UnsubscribeClaim(subscriber_id, 1, 1), "one-click")
            assert (result.known, result.changed, result.masked_email) == (False, False, "")
    assert snapshot(database) == before


def test_a_caller_holding_loaded_subscriptions_sees_them_ended(database: Database, config: Config) -> None:
    make_lists(database, "news")
    ana = add_person(database, "ana@example.com", "news")
    with database.session() as session:
        subscriber = session.scalars(sa.select(Subscriber).where(Subscriber.id == ana.subscriber_id)).one()
        [subscription] = subscriber.subscriptions
        assert subscription.status is SubscriptionStatus.ACTIVE
        unsubscribe(session, config, UnsubscribeClaim(ana.subscriber_id, None, None), "cli", actor="cli:test")
        assert subscription.status is SubscriptionStatus.UNSUBSCRIBED
        assert subscription.unsubscribed_at is not None
    assert audit_events(database)[0].actor == "cli:test"


def test_two_clicks_at_once_make_one_suppression_and_no_error(database: Database, config: Config) -> None:
    make_lists(database, "news")
    ana = add_person(database, "ana@example.com", "news")
    claim = UnsubscribeClaim(ana.subscriber_id, None, None)
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def click() -> None:
        try:
            start.wait(timeout=10)
            with database.session() as session:
                unsubscribe(session, config, claim, OptOutSource.ONE_CLICK)
        except BaseException as exc:  # reported below; a thread's exception is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=click) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert len(suppressions(database)) == 1


def test_a_click_waiting_on_another_adds_no_second_audit_row(database: Database, config: Config) -> None:
    make_lists(database, "news", "offers")
    ana = add_person(database, "ana@example.com", "news", "offers")
    claim = UnsubscribeClaim(ana.subscriber_id, None, None)
    errors: list[BaseException] = []

    def second_click() -> None:
        try:
            with database.session() as session:
                unsubscribe(session, config, claim, OptOutSource.PAGE)
        except BaseException as exc:  # reported below; a thread's exception is otherwise lost
            errors.append(exc)

    with database.session() as session:
        unsubscribe(session, config, claim, OptOutSource.ONE_CLICK)
        # the second click reads before the first commits, then waits for its locks
        # (PostgreSQL) or its write transaction (SQLite)
        thread = threading.Thread(target=second_click)
        thread.start()
        thread.join(timeout=1)
        assert thread.is_alive()
    thread.join(timeout=30)
    assert errors == []
    assert len(suppressions(database)) == 1
    events = audit_events(database)
    assert len(events) == 1 and events[0].reason == "one-click"
    assert set(statuses(database, ana).values()) == {SubscriptionStatus.UNSUBSCRIBED}


def test_a_bounce_suppressing_while_a_click_does_is_no_error(database: Database, config: Config) -> None:
    make_lists(database, "news")
    ana = add_person(database, "ana@example.com", "news")
    claim = UnsubscribeClaim(ana.subscriber_id, None, None)
    results: list[bool] = []
    errors: list[BaseException] = []

    def bounce() -> None:
        try:
            with database.session() as session:
                results.append(suppress_address(session, ana.email, SuppressionReason.HARD_BOUNCE, "bounce")[1])
        except BaseException as exc:  # reported below; a thread's exception is otherwise lost
            errors.append(exc)

    with database.session() as session:
        unsubscribe(session, config, claim, OptOutSource.ONE_CLICK)
        thread = threading.Thread(target=bounce)
        thread.start()
        thread.join(timeout=1)
        assert thread.is_alive()
    thread.join(timeout=30)
    assert errors == [] and results == [False]
    [entry] = suppressions(database)
    assert entry.reason is SuppressionReason.UNSUBSCRIBED


def test_suppressing_someone_on_no_list_any_more_is_audited(database: Database, config: Config) -> None:
    make_lists(database, "news")
    ana = add_person(database, "ana@example.com", "news")
    claim = UnsubscribeClaim(ana.subscriber_id, ana.list_ids["news"], None)
    with database.session() as session:
        unsubscribe(session, list_scope(config), claim, OptOutSource.PAGE)
    with database.session() as session:
        result = unsubscribe(session, config, claim, OptOutSource.ONE_CLICK)
    assert result.changed
    assert [entry.reason for entry in suppressions(database)] == [SuppressionReason.UNSUBSCRIBED]
    assert [event.reason for event in audit_events(database)] == ["page", "one-click"]
