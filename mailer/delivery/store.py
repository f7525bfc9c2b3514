"""The delivery store: audience snapshots, batch claims and outcomes, in SQL for SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from mailer.audit import record_event
from mailer.bounce_class import enhanced_status
from mailer.content.compose import Recipient
from mailer.db import Database, address_hash
from mailer.models import (
    Campaign,
    CampaignKind,
    CampaignStatus,
    Delivery,
    DeliveryState,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    Suppression,
    SuppressionReason,
)
from mailer.policy_blocks import PolicyPauseRule, pause_for_policy_blocks, record_policy_block
from mailer.recipients.suppression import AuditNote, suppress

# a notice (breach, terms) reaches people who opted out of marketing, but never these
NOTICE_BLOCKING_REASONS = frozenset({SuppressionReason.HARD_BOUNCE, SuppressionReason.ERASED})


def make_worker_id() -> str:
    """`host:pid:instance`: lets a sender on the same host tell a dead claimer from a live one.

    The instance (boot, pid namespace, process start time) tells the claimer from a process that
    got its pid later, after a crash or a reboot, and from a container of the same host name."""
    return f"{socket.gethostname()}:{os.getpid()}:{_process_instance(os.getpid())}"


def _process_instance(pid: int) -> str:
    # Linux only; elsewhere the pid alone decides, as it did before instances were recorded
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
            boot = fh.read().strip()[:8]
        namespace = "".join(ch for ch in os.readlink("/proc/self/ns/pid") if ch.isdigit())
        return f"{boot}-{namespace}-{_start_ticks(pid)}"
    except (OSError, IndexError):
        return ""


def _start_ticks(pid: int) -> str:
    # field 22 of /proc/PID/stat: when the process started, in clock ticks since boot
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
        return fh.read().rpartition(")")[2].split()[19]


@dataclass(frozen=True)
class Outcome:
    """What became of one claimed delivery; the pipeline decides, the store records."""

    delivery_id: int
    state: DeliveryState  # SENT, DEFERRED, FAILED, or PENDING for a message never handed over
    code: int | None = None
    response: str = ""
    next_attempt_at: dt.datetime | None = None
    hard_bounce: str | None = None  # the address to suppress: the relay said it does not exist
    policy_block: str | None = None  # the address refused by policy (5.7.x): counted, never suppressed


@dataclass
class Batch:
    """Deliveries claimed for sending, with their recipients; `stopped` when the campaign is not sending."""

    recipients: list[Recipient] = field(default_factory=list)
    attempts: dict[int, int] = field(default_factory=dict)  # delivery id -> attempts before this one
    suppressed: int = 0  # claimed but opted out since the snapshot: marked, not sent
    stopped: bool = False
    paused_reason: str = ""  # the outcomes just recorded paused the campaign (policy blocks)


# -- audience snapshots -------------------------------------------------------------------------


def snapshot_audience(session: Session, campaign: Campaign, now: dt.datetime) -> int:
    """Create the campaign's pending deliveries; returns how many. Running it again adds only newcomers."""
    if campaign.kind is CampaignKind.NOTICE:
        return insert_notice_audience(session, campaign.id, now)
    if campaign.list_id is None:
        return 0
    return insert_list_audience(session, campaign.id, campaign.list_id, now)


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


# -- claims --------------------------------------------------------------------------------------


class SqlDeliveryStore:
    """Deliveries in the mailer's database, claimed by one sender process at a time per batch."""

    def __init__(self, database: Database, worker_id: str | None = None,
                 policy_pause: PolicyPauseRule | None = None) -> None:
        self.database = database
        self.worker_id = worker_id or make_worker_id()
        self.policy_pause = policy_pause or PolicyPauseRule()

    def claim_batch(self, campaign_id: int, limit: int, now: dt.datetime,
                    finished: Sequence[Outcome] = ()) -> Batch:
        """Record `finished` outcomes, then claim up to `limit` due deliveries, in one transaction.

        Opted-out recipients are marked suppressed, not returned. `stopped` when the campaign is
        no longer sending (paused, cancelled); the outcomes are recorded all the same, and
        `paused_reason` says when they themselves paused it."""
        with self.database.session() as session:
            if finished:
                reason = _record(session, campaign_id, finished, now, self.policy_pause)
                if reason:
                    return Batch(stopped=True, paused_reason=reason)
            if limit <= 0:
                return Batch()
            campaign = session.execute(
                sa.select(Campaign.status, Campaign.kind, Campaign.list_id).where(Campaign.id == campaign_id)
            ).one_or_none()
            if campaign is None or campaign.status is not CampaignStatus.SENDING:
                return Batch(stopped=True)
            ids = claim_due_deliveries(session, campaign_id, limit, now, self.worker_id)
            if not ids:
                return Batch()
            return _load_recipients(session, ids, campaign.kind, campaign.list_id, now)

    def record_outcomes(self, campaign_id: int, outcomes: Sequence[Outcome], now: dt.datetime) -> str:
        """Write what happened to each claimed delivery in one transaction; suppress hard bounces.

        Returns why the campaign paused when these outcomes passed its share of policy blocks, else ""."""
        if not outcomes:
            return ""
        with self.database.session() as session:
            return _record(session, campaign_id, outcomes, now, self.policy_pause)

    def refresh_claims(self, now: dt.datetime) -> None:
        """Heartbeat: our claims are alive, so no other host takes them as in doubt."""
        with self.database.session() as session:
            session.execute(
                sa.update(Delivery)
                .where(Delivery.claimed_by == self.worker_id, Delivery.state == DeliveryState.SENDING)
                .values(claimed_at=now)
                .execution_options(synchronize_session=False)
            )

    def pause_campaign(self, campaign_id: int, reason: str) -> None:
        """The relay keeps failing: stop the campaign with a reason the marketer can read."""
        with self.database.session() as session:
            session.execute(
                sa.update(Campaign)
                .where(Campaign.id == campaign_id, Campaign.status == CampaignStatus.SENDING)
                .values(status=CampaignStatus.PAUSED, status_reason=reason[:1000])
                .execution_options(synchronize_session=False)
            )
            record_event(session, "pause", "mailer", subject=f"campaign {campaign_id}", reason=reason[:1000])


def _record(session: Session, campaign_id: int, outcomes: Sequence[Outcome], now: dt.datetime,
            policy_pause: PolicyPauseRule) -> str:
    update_delivery_outcomes(session, outcomes, now)
    if any(o.state in (DeliveryState.PENDING, DeliveryState.DEFERRED) for o in outcomes):
        # cancelled while these were in flight: what was released or deferred never goes out
        # either. FOR SHARE (PostgreSQL) orders this against a cancel committing at this moment:
        # either we see it, or it waits for us and then finds these rows queued
        status = session.scalar(sa.select(Campaign.status).where(Campaign.id == campaign_id)
                                .with_for_update(read=True))
        if status is CampaignStatus.CANCELLED:
            cancel_queued_deliveries(session, campaign_id, now)
    for outcome in outcomes:
        if outcome.hard_bounce:
            suppress(session, outcome.hard_bounce, SuppressionReason.HARD_BOUNCE,
                     f"smtp {outcome.code}: campaign {campaign_id}",
                     AuditNote("mailer", f"hard bounce: {outcome.response}",
                               detail={"campaign_id": campaign_id, "code": outcome.code}))
    blocked = [o for o in outcomes if o.policy_block]
    for outcome in blocked:
        record_policy_block(session, outcome.delivery_id, campaign_id, address_hash(outcome.policy_block or ""),
                            enhanced_status(outcome.response), outcome.response, now)
    return pause_for_policy_blocks(session, campaign_id, policy_pause) if blocked else ""


def claim_due_deliveries(
    session: Session, campaign_id: int, limit: int, now: dt.datetime, worker_id: str
) -> list[int]:
    """claim_due_deliveries: mark up to `limit` due deferred, then pending rows as sending by us."""
    due_retries = sa.and_(Delivery.state == DeliveryState.DEFERRED, Delivery.next_attempt_at <= now)
    claimed = _claim_where(session, campaign_id, due_retries, limit, now, worker_id)
    if len(claimed) < limit:
        waiting = Delivery.state == DeliveryState.PENDING
        claimed += _claim_where(session, campaign_id, waiting, limit - len(claimed), now, worker_id)
    return sorted(claimed)


def _claim_where(session: Session, campaign_id: int, condition: sa.ColumnElement[bool], limit: int,
                 now: dt.datetime, worker_id: str) -> list[int]:
    # one state at a time, ordered by next_attempt_at: the (campaign_id, state, next_attempt_at)
    # index then yields rows in order and the scan stops at LIMIT, so a claim costs the same at
    # the end of a 100,000-row campaign as at its start (an OR of states made every claim sort
    # the whole campaign). The inner SELECT skips rows another worker holds (PostgreSQL FOR
    # UPDATE SKIP LOCKED), so concurrent workers take disjoint batches without waiting; SQLite
    # ignores the clause, and the session's BEGIN IMMEDIATE makes the claim one writer at a time.
    due = (
        sa.select(Delivery.id)
        .where(Delivery.campaign_id == campaign_id, condition)
        .order_by(Delivery.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list(session.scalars(
        sa.update(Delivery)
        .where(Delivery.id.in_(due.scalar_subquery()))
        .values(state=DeliveryState.SENDING, claimed_by=worker_id, claimed_at=now, updated_at=now)
        .returning(Delivery.id)
        .execution_options(synchronize_session=False)
    ).all())


def _load_recipients(
    session: Session, ids: list[int], kind: CampaignKind, list_id: int | None, now: dt.datetime
) -> Batch:
    # select_claimed_recipients: one row per claimed delivery with its person and subscription
    rows = session.execute(
        sa.select(
            Delivery.id, Delivery.attempts, Subscriber.id.label("subscriber_id"), Subscriber.email,
            Subscriber.email_normalized, Subscriber.name, Subscriber.attributes,
            Subscription.status, Subscription.confirmed_at, Subscription.consent_at,
        )
        .select_from(Delivery)
        .outerjoin(Subscriber, Subscriber.id == Delivery.subscriber_id)
        .outerjoin(
            Subscription,
            sa.and_(Subscription.subscriber_id == Delivery.subscriber_id, Subscription.list_id == list_id),
        )
        .where(Delivery.id.in_(ids))
        .order_by(Delivery.id)
    ).all()
    hashes = {row.id: address_hash(row.email_normalized) for row in rows if row.email_normalized}
    # select_suppressions_by_hash: the authority on opt-outs, erased addresses included
    reasons = dict(
        session.execute(
            sa.select(Suppression.address_hash, Suppression.reason).where(
                Suppression.address_hash.in_(set(hashes.values()))
            )
        ).all()
    ) if hashes else {}
    batch = Batch()
    blocked: list[int] = []
    for row in rows:
        reason = reasons.get(hashes.get(row.id, ""))
        if kind is CampaignKind.NOTICE:
            refused = row.subscriber_id is None or reason in NOTICE_BLOCKING_REASONS
        else:
            refused = row.subscriber_id is None or reason is not None or row.status is not SubscriptionStatus.ACTIVE
        if refused:
            blocked.append(row.id)
            continue
        batch.recipients.append(Recipient(
            delivery_id=row.id, subscriber_id=row.subscriber_id, email=row.email, name=row.name,
            attributes=dict(row.attributes or {}), subscribed_at=row.confirmed_at or row.consent_at,
        ))
        batch.attempts[row.id] = row.attempts
    if blocked:
        # mark_suppressed_deliveries: opted out after the snapshot; recorded, never sent
        session.execute(
            sa.update(Delivery)
            .where(Delivery.id.in_(blocked))
            .values(state=DeliveryState.SUPPRESSED, claimed_by=None, updated_at=now,
                    last_response="opted out before its turn")
            .execution_options(synchronize_session=False)
        )
        batch.suppressed = len(blocked)
    return batch


def update_delivery_outcomes(session: Session, outcomes: Sequence[Outcome], now: dt.datetime) -> None:
    """update_delivery_outcomes: one executemany UPDATE by primary key for the whole batch."""
    handed_over = [o for o in outcomes if o.state is not DeliveryState.PENDING]
    released = [o.delivery_id for o in outcomes if o.state is DeliveryState.PENDING]
    if handed_over:
        table: sa.Table = Delivery.__table__  # type: ignore[assignment]
        statement = (
            table.update()
            .where(table.c.id == sa.bindparam("b_id"))
            .values(
                state=sa.bindparam("b_state"), attempts=table.c.attempts + 1,
                last_code=sa.bindparam("b_code"), last_response=sa.bindparam("b_response"),
                next_attempt_at=sa.bindparam("b_next", type_=table.c.next_attempt_at.type),
                sent_at=sa.bindparam("b_sent", type_=table.c.sent_at.type),
                claimed_by=None, updated_at=now,
            )
        )
        session.execute(statement, [
            {
                "b_id": o.delivery_id, "b_state": o.state.value, "b_code": o.code,
                "b_response": o.response[:1000], "b_next": o.next_attempt_at,
                "b_sent": now if o.state is DeliveryState.SENT else None,
            }
            for o in handed_over
        ])
    if released:
        # release_unsent_claims: never handed to the relay (stop signal, relay down): back in the queue
        session.execute(
            sa.update(Delivery)
            .where(Delivery.id.in_(released), Delivery.state == DeliveryState.SENDING)
            .values(state=DeliveryState.PENDING, claimed_by=None, claimed_at=None, next_attempt_at=None,
                    updated_at=now)
            .execution_options(synchronize_session=False)
        )


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


def mark_abandoned_claims(session: Session, now: dt.datetime, claim_timeout: float) -> int:
    """mark_abandoned_claims: in-flight rows whose sender died become in_doubt; returns how many.

    A claimer on this host is dead when its process is gone; on another host, when it has not
    refreshed its claims for `claim_timeout` seconds.
    """
    host = socket.gethostname()
    claimers = session.execute(
        sa.select(Delivery.claimed_by, sa.func.max(Delivery.claimed_at))
        .where(Delivery.state == DeliveryState.SENDING)
        .group_by(Delivery.claimed_by)
    ).all()
    stale_before = now - dt.timedelta(seconds=claim_timeout)
    dead = [
        claimer for claimer, last_seen in claimers
        if claimer is None or _is_dead(claimer, host) or (last_seen is not None and last_seen < stale_before)
    ]
    if not dead:
        return 0
    condition = sa.or_(Delivery.claimed_by.in_([c for c in dead if c is not None]),
                       Delivery.claimed_by.is_(None))
    result = session.execute(
        sa.update(Delivery)
        .where(Delivery.state == DeliveryState.SENDING, condition)
        .values(state=DeliveryState.IN_DOUBT, updated_at=now,
                last_response="the sender stopped while this message was in flight")
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def _is_dead(claimer: str, host: str) -> bool:
    claim_host, _, rest = claimer.partition(":")
    pid_text, _, instance = rest.partition(":")
    if claim_host != host or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    ours = _process_instance(os.getpid())
    if instance and ours:
        boot_and_namespace = instance.rpartition("-")[0]
        if boot_and_namespace != ours.rpartition("-")[0]:
            # another boot, or another container of this name: its pids are not ours to
            # look up, so only a claim gone stale (claim_timeout) counts as abandoned
            return False
    if pid == os.getpid():
        return bool(instance) and bool(ours) and instance != ours
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, owned by another user
    if instance and ours:
        try:
            if instance.rpartition("-")[2] != _start_ticks(pid):
                return True  # the claimer died and its pid went to a newer process
        except (OSError, IndexError):
            return True  # gone since kill(0)
    return _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    # a killed child its parent has not reaped yet still answers kill(0); /proc knows better
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rpartition(")")[2].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def count_deliveries(session: Session, campaign_id: int) -> dict[DeliveryState, int]:
    """count_deliveries_by_state: one grouped query; every state is present, zero when absent."""
    counts = dict.fromkeys(DeliveryState, 0)
    for state, n in session.execute(
        sa.select(Delivery.state, sa.func.count()).where(Delivery.campaign_id == campaign_id)
        .group_by(Delivery.state)
    ):
        counts[state] = n
    return counts
