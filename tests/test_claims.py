"""Batch claims on SQLite and PostgreSQL: disjoint batches, outcomes, opt-outs found at claim time,
claims their sender abandoned, and the relay pause."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys

import sqlalchemy as sa
from sending_helpers import add_audience, campaign_row, delivery_states, emails, make_campaign

from mailer.campaigns import check_recipients
from mailer.db import Database
from mailer.delivery.claims import Outcome, SqlDeliveryStore, mark_abandoned_claims
from mailer.delivery.senders import make_worker_id
from mailer.lifecycle import cancel_campaign, pause_campaign, start_campaign
from mailer.models import (
    AuditEvent,
    Campaign,
    CampaignStatus,
    Delivery,
    DeliveryState,
    Subscriber,
    Subscription,
    Suppression,
    SuppressionReason,
    utcnow,
)
from mailer.recipients.suppression import suppress_address

T0 = dt.datetime(2026, 11, 29, 9, 0, tzinfo=dt.UTC)


def _started_campaign(database: Database, addresses: list[str]) -> int:
    campaign_id = make_campaign(database, add_audience(database, "news", addresses))
    with database.session() as session:
        start_campaign(session, campaign_id, T0)
    return campaign_id


def _state_of(database: Database, campaign_id: int) -> dict[str, DeliveryState]:
    return {address: row.state for address, row in delivery_states(database, campaign_id).items()}


def _audit(database: Database, action: str) -> list[AuditEvent]:
    with database.session() as session:
        events = list(session.scalars(sa.select(AuditEvent).where(AuditEvent.action == action)))
        session.expunge_all()
    return events


def test_two_senders_claim_disjoint_batches_until_none_is_left(database: Database) -> None:
    campaign_id = _started_campaign(database, emails(10))
    first, second = SqlDeliveryStore(database, "host-a:1:"), SqlDeliveryStore(database, "host-b:1:")

    a = first.claim_batch(campaign_id, 4, T0)
    b = second.claim_batch(campaign_id, 4, T0)
    rest = first.claim_batch(campaign_id, 10, T0)
    nothing = second.claim_batch(campaign_id, 10, T0)

    claimed = [r.email for batch in (a, b, rest) for r in batch.recipients]
    assert (len(a.recipients), len(b.recipients), len(rest.recipients), len(nothing.recipients)) == (4, 4, 2, 0)
    assert sorted(claimed) == emails(10)
    assert not nothing.stopped
    assert set(_state_of(database, campaign_id).values()) == {DeliveryState.SENDING}


def test_a_claimed_recipient_carries_when_they_subscribed_for_the_footer(database: Database) -> None:
    # the footer says since when: confirmed by double opt-in, else the consent itself
    campaign_id = _started_campaign(database, emails(2))
    confirmed, consented = dt.datetime(2026, 3, 3, 8, 0, tzinfo=dt.UTC), dt.datetime(2026, 2, 1, 8, 0, tzinfo=dt.UTC)
    with database.session() as session:
        session.execute(sa.update(Subscription).values(consent_at=consented, confirmed_at=None))
        subscriber_id = session.scalar(sa.select(Subscriber.id).where(Subscriber.email == emails(2)[0]))
        session.execute(sa.update(Subscription).where(Subscription.subscriber_id == subscriber_id)
                        .values(confirmed_at=confirmed))
    batch = SqlDeliveryStore(database).claim_batch(campaign_id, 10, T0)
    assert {r.email: r.subscribed_at for r in batch.recipients} == {emails(2)[0]: confirmed, emails(2)[1]: consented}


def test_claims_of_any_size_carry_each_persons_data_and_leave_out_the_opted_out(database: Database) -> None:
    # the claimed rows are read in lists of 1, 2, 3 and 5 ids, none a power of two but the first two
    addresses = emails(12)
    campaign_id = _started_campaign(database, addresses)
    with database.session() as session:
        for n, address in enumerate(addresses):
            session.execute(sa.update(Subscriber).where(Subscriber.email == address).values(
                name=f"P\u00e9rson {n}", attributes={"n": n, "tags": ["a", "b"], "city": None}))
        suppress_address(session, addresses[4], SuppressionReason.UNSUBSCRIBED, source="test")
    store = SqlDeliveryStore(database)
    claimed = [store.claim_batch(campaign_id, size, T0) for size in (1, 2, 3, 5, 1)]
    people = [r for batch in claimed for r in batch.recipients]
    assert [(r.email, r.name, r.attributes) for r in people] == [
        (address, f"P\u00e9rson {n}", {"n": n, "tags": ["a", "b"], "city": None})
        for n, address in enumerate(addresses) if n != 4]
    assert sum(batch.suppressed for batch in claimed) == 1
    assert all(r.subscribed_at is not None and r.subscribed_at.tzinfo is dt.UTC for r in people)
    assert {claimed[2].attempts[r.delivery_id] for r in claimed[2].recipients} == {0}


def test_the_gate_picks_one_subscriber_of_each_kind_however_their_attributes_are_stored(
        database: Database) -> None:
    # a kind is the set of attribute names, with or without a name; values and key order do not count
    stored: list[tuple[str, dict[str, object] | None]] = [
        ("Ana", {"city": "Faro"}), ("Bo", {"city": "Porto"}), ("", {"city": "Faro"}), ("Cy", {}),
        ("Di", None), ("Ed", {"tier": "gold", "city": "Faro"}), ("Fa", {"city": "Faro", "tier": "x"}),
    ]
    addresses = emails(len(stored))
    list_id = add_audience(database, "news", addresses)
    with database.session() as session:
        for address, (name, attributes) in zip(addresses, stored, strict=True):
            session.execute(sa.update(Subscriber).where(Subscriber.email == address).values(
                name=name, attributes=attributes))  # None: the JSON text "null"
    campaign_id = make_campaign(database, list_id)
    with database.session() as session:
        chosen = check_recipients(session, session.get_one(Campaign, campaign_id))
    assert [r.email for r in chosen] == [addresses[i] for i in (0, 2, 3, 5)]
    assert [r.attributes for r in chosen] == [{"city": "Faro"}, {"city": "Faro"}, {}, {"tier": "gold", "city": "Faro"}]


def test_outcome_times_are_stored_as_every_other_write_stores_them(database: Database) -> None:
    # a query for "sent at or after T0" must find a message sent at T0 exactly, whatever wrote it
    campaign_id = _started_campaign(database, emails(2))
    store = SqlDeliveryStore(database)
    sent, deferred = store.claim_batch(campaign_id, 2, T0).recipients
    retry_at = T0 + dt.timedelta(minutes=1)
    store.record_outcomes(campaign_id, [Outcome(sent.delivery_id, DeliveryState.SENT, 250, "250 ok"),
                                        Outcome(deferred.delivery_id, DeliveryState.DEFERRED, 451, "451 later",
                                                next_attempt_at=retry_at)], T0)
    with database.session() as session:
        assert session.scalars(sa.select(Delivery.id).where(Delivery.sent_at >= T0)).all() == [sent.delivery_id]
        assert session.scalars(sa.select(Delivery.id).where(Delivery.next_attempt_at <= retry_at,
                                                            Delivery.updated_at >= T0)).all() == [deferred.delivery_id]


def test_rows_put_back_behind_a_senders_last_claim_are_still_sent_once(database: Database) -> None:
    # a sender's claims go on after the last id it took; rows put back in the queue behind it
    # (released by a stopped send) are claimed once the rows ahead run short, none twice
    campaign_id = _started_campaign(database, emails(10))
    store = SqlDeliveryStore(database, "host-a:1:")
    first = store.claim_batch(campaign_id, 3, T0).recipients
    store.record_outcomes(campaign_id, [Outcome(r.delivery_id, DeliveryState.PENDING) for r in first], T0)

    batches: list[list[str]] = []
    while batch := store.claim_batch(campaign_id, 3, T0).recipients:
        batches.append([r.email for r in batch])
        store.record_outcomes(campaign_id, [Outcome(r.delivery_id, DeliveryState.SENT, 250, "250 ok")
                                            for r in batch], T0)

    released = {r.email for r in first}
    claimed = [address for batch in batches for address in batch]
    assert not released & set(batches[0])  # the next claim went on past them
    assert sorted(claimed) == emails(10)
    assert set(_state_of(database, campaign_id).values()) == {DeliveryState.SENT}


def test_outcomes_are_recorded_and_a_hard_bounce_is_suppressed_once(database: Database) -> None:
    campaign_id = _started_campaign(database, emails(4))
    store = SqlDeliveryStore(database, "host-a:1:")
    batch = store.claim_batch(campaign_id, 4, T0)
    sent, deferred, released, bounced = batch.recipients
    retry_at = T0 + dt.timedelta(minutes=1)

    paused = store.record_outcomes(campaign_id, [
        Outcome(sent.delivery_id, DeliveryState.SENT, 250, "250 ok"),
        Outcome(deferred.delivery_id, DeliveryState.DEFERRED, 451, "451 later", retry_at),
        Outcome(released.delivery_id, DeliveryState.PENDING),
        Outcome(bounced.delivery_id, DeliveryState.FAILED, 550, "550 5.1.1 no such user", hard_bounce=bounced.email),
    ], T0)

    assert paused == ""
    assert _state_of(database, campaign_id) == {
        sent.email: DeliveryState.SENT, deferred.email: DeliveryState.DEFERRED,
        released.email: DeliveryState.PENDING, bounced.email: DeliveryState.FAILED,
    }
    with database.session() as session:
        reasons = dict(session.execute(sa.select(Suppression.email, Suppression.reason)).all())
    assert reasons == {bounced.email: SuppressionReason.HARD_BOUNCE}
    assert [e.subject for e in _audit(database, "suppress")] == [bounced.email]
    # the released one goes out again at once; the deferred one only when its time comes
    assert [r.email for r in store.claim_batch(campaign_id, 4, T0).recipients] == [released.email]
    assert [r.email for r in store.claim_batch(campaign_id, 4, retry_at).recipients] == [deferred.email]


def test_an_address_that_opted_out_after_the_snapshot_is_marked_and_not_handed_out(database: Database) -> None:
    campaign_id = _started_campaign(database, ["ana@example.com", "bo@example.com"])
    with database.session() as session:
        suppress_address(session, "bo@example.com", SuppressionReason.UNSUBSCRIBED, source="test")

    batch = SqlDeliveryStore(database, "host-a:1:").claim_batch(campaign_id, 10, T0)

    assert [r.email for r in batch.recipients] == ["ana@example.com"]
    assert batch.suppressed == 1
    assert _state_of(database, campaign_id)["bo@example.com"] is DeliveryState.SUPPRESSED


def test_a_paused_campaign_hands_out_nothing_but_keeps_what_was_sent(database: Database) -> None:
    campaign_id = _started_campaign(database, emails(3))
    store = SqlDeliveryStore(database, "host-a:1:")
    (first, *_) = store.claim_batch(campaign_id, 1, T0).recipients
    with database.session() as session:
        pause_campaign(session, campaign_id, "wrong price")

    batch = store.claim_batch(campaign_id, 10, T0, [Outcome(first.delivery_id, DeliveryState.SENT, 250, "ok")])

    assert batch.stopped and batch.recipients == []
    assert _state_of(database, campaign_id)[first.email] is DeliveryState.SENT
    assert list(_state_of(database, campaign_id).values()).count(DeliveryState.PENDING) == 2


def test_what_a_sender_releases_or_defers_after_a_cancel_never_goes_out(database: Database) -> None:
    campaign_id = _started_campaign(database, emails(3))
    store = SqlDeliveryStore(database, "host-a:1:")
    released, deferred = store.claim_batch(campaign_id, 2, T0).recipients
    with database.session() as session:
        assert cancel_campaign(session, campaign_id, "wrong list") == 1  # the one still queued

    store.record_outcomes(campaign_id, [
        Outcome(released.delivery_id, DeliveryState.PENDING),
        Outcome(deferred.delivery_id, DeliveryState.DEFERRED, 451, "later", T0 + dt.timedelta(minutes=1)),
    ], T0)

    assert set(_state_of(database, campaign_id).values()) == {DeliveryState.CANCELLED}


def test_claims_of_a_dead_or_silent_sender_become_in_doubt_and_a_live_ones_stay(database: Database) -> None:
    campaign_id = _started_campaign(database, emails(6))
    # a sender on this host that has exited since
    dead_id = subprocess.run(
        [sys.executable, "-c", "from mailer.delivery.senders import make_worker_id; print(make_worker_id())"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    live = SqlDeliveryStore(database, make_worker_id())
    dead = SqlDeliveryStore(database, dead_id)
    elsewhere = SqlDeliveryStore(database, "another-host:4242:")
    now = utcnow()
    ours = live.claim_batch(campaign_id, 2, now).recipients
    theirs = dead.claim_batch(campaign_id, 2, now).recipients
    remote = elsewhere.claim_batch(campaign_id, 2, now - dt.timedelta(seconds=600)).recipients
    live.refresh_claims(now)

    with database.session() as session:
        in_doubt = mark_abandoned_claims(session, now, claim_timeout=300)

    states = _state_of(database, campaign_id)
    assert in_doubt == 4
    assert {states[r.email] for r in theirs + remote} == {DeliveryState.IN_DOUBT}
    assert {states[r.email] for r in ours} == {DeliveryState.SENDING}


def test_a_relay_pause_stops_the_campaign_and_is_recorded_once(database: Database) -> None:
    campaign_id = _started_campaign(database, emails(2))
    store = SqlDeliveryStore(database, "host-a:1:")

    store.pause_campaign(campaign_id, "paused after 10 connection failures in a row")
    store.pause_campaign(campaign_id, "paused after 10 connection failures in a row")  # a second sender

    campaign = campaign_row(database, campaign_id)
    assert campaign.status is CampaignStatus.PAUSED
    assert campaign.status_reason == "paused after 10 connection failures in a row"
    (event,) = _audit(database, "campaign_paused")
    assert (event.actor, event.subject) == ("mailer", f"campaign {campaign_id}")
    assert store.claim_batch(campaign_id, 2, T0).stopped
