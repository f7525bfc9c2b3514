"""A campaign's deliveries as a whole: created from its audience, counted by state, cancelled while queued."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from mailer.db import analyze_tables
from mailer.models import (
    Campaign,
    CampaignKind,
    Delivery,
    DeliveryState,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    Suppression,
    SuppressionReason,
)

# a notice (breach, terms) reaches people who opted out of marketing, but never these
NOTICE_BLOCKING_REASONS = frozenset({SuppressionReason.HARD_BOUNCE, SuppressionReason.ERASED})


def snapshot_audience(session: Session, campaign: Campaign, now: dt.datetime) -> int:
    """Create the campaign's pending deliveries; returns how many. Running it again adds only newcomers."""
    if campaign.kind is CampaignKind.NOTICE:
        created = insert_notice_audience(session, campaign.id, now)
    elif campaign.list_id is None:
        return 0
    else:
        created = insert_list_audience(session, campaign.id, campaign.list_id, now)
    if created:
        # the claims of this send are planned on these statistics: a new campaign's rows unknown
        # to them would be planned as a handful
        analyze_tables(session, ["deliveries"])
    return created


def _insert_deliveries(session: Session, campaign_id: int, subscribers: sa.Select[Any],
                       now: dt.datetime) -> int:
    # one INSERT ... SELECT: the audience never passes through Python, so memory does not grow with
    # the list; the unique (campaign, subscriber) key plus NOT EXISTS makes a second run add nothing
    already = sa.select(Delivery.id).where(
        Delivery.campaign_id == campaign_id, Delivery.subscriber_id == Subscriber.id
    )
    chosen = subscribers.where(~sa.exists(already)).add_columns(
        sa.literal(campaign_id, sa.Integer),
        sa.literal(DeliveryState.PENDING.value, sa.String),
        sa.literal(0, sa.Integer),
        sa.literal("", sa.String),
        sa.literal(now, Delivery.__table__.c.created_at.type),
        sa.literal(now, Delivery.__table__.c.updated_at.type),
    )
    insert = sa.insert(Delivery).from_select(
        ["subscriber_id", "campaign_id", "state", "attempts", "last_response", "created_at", "updated_at"],
        chosen,
    )
    # psycopg reports no rowcount for SQLAlchemy's INSERT ... SELECT, so count the campaign's rows
    count = sa.select(sa.func.count()).select_from(Delivery).where(Delivery.campaign_id == campaign_id)
    before = session.scalar(count) or 0
    session.execute(insert)
    return (session.scalar(count) or 0) - before


def insert_list_audience(session: Session, campaign_id: int, list_id: int, now: dt.datetime) -> int:
    """insert_list_audience: active subscriptions of the list whose address is not suppressed."""
    # suppressions are matched on the kept address here; an entry kept only as a hash belongs to an
    # erased person with no subscriber row left, and claim_batch re-checks every hash anyway
    suppressed = sa.select(Suppression.id).where(Suppression.email == Subscriber.email_normalized)
    members = (
        sa.select(Subscriber.id)
        .join(Subscription, Subscription.subscriber_id == Subscriber.id)
        .where(
            Subscription.list_id == list_id,
            Subscription.status == SubscriptionStatus.ACTIVE,
            ~sa.exists(suppressed),
        )
    )
    return _insert_deliveries(session, campaign_id, members, now)


def insert_notice_audience(session: Session, campaign_id: int, now: dt.datetime) -> int:
    """insert_notice_audience: every subscriber not erased and not hard-bounced, subscribed or not."""
    blocked = sa.select(Suppression.id).where(
        Suppression.email == Subscriber.email_normalized,
        Suppression.reason.in_(NOTICE_BLOCKING_REASONS),
    )
    everyone = sa.select(Subscriber.id).where(~sa.exists(blocked))
    return _insert_deliveries(session, campaign_id, everyone, now)


def cancel_queued_deliveries(session: Session, campaign_id: int, now: dt.datetime) -> int:
    """cancel_queued_deliveries: the campaign's pending and deferred rows never go out; returns how many.

    Rows in flight finish as they are; a sender that then releases or defers them cancels them."""
    result = session.execute(
        sa.update(Delivery)
        .where(Delivery.campaign_id == campaign_id,
               Delivery.state.in_((DeliveryState.PENDING, DeliveryState.DEFERRED)))
        .values(state=DeliveryState.CANCELLED, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def count_deliveries(session: Session, campaign_id: int) -> dict[DeliveryState, int]:
    """count_deliveries_by_state: one grouped query; every state is present, zero when absent."""
    counts = dict.fromkeys(DeliveryState, 0)
    for state, n in session.execute(
        sa.select(Delivery.state, sa.func.count()).where(Delivery.campaign_id == campaign_id)
        .group_by(Delivery.state)
    ):
        counts[state] = n
    return counts
