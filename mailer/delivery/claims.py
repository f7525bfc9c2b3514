"""Batch claims: who sends which delivery, the outcomes they record, and claims their sender abandoned."""

from __future__ import annotations

import datetime as dt
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.orm import Session

from mailer.bounce_class import enhanced_status
from mailer.content.compose import Recipient
from mailer.db import Database, address_hash
from mailer.delivery.deliveries import NOTICE_BLOCKING_REASONS, cancel_queued_deliveries
from mailer.delivery.senders import claimer_is_dead, make_worker_id
from mailer.lifecycle import pause_on_failure
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
    live_state,
)
from mailer.policy_blocks import PolicyPauseRule, pause_for_policy_blocks, record_policy_block
from mailer.recipients.suppression import AuditNote, suppress


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


class SqlDeliveryStore:
    """Deliveries in the mailer's database, claimed by one sender process at a time per batch."""

    def __init__(self, database: Database, worker_id: str | None = None,
                 policy_pause: PolicyPauseRule | None = None) -> None:
        self.database = database
        self.worker_id = worker_id or make_worker_id()
        self.policy_pause = policy_pause or PolicyPauseRule()
        # per campaign, the highest pending id this sender claimed: its next claim starts there
        self.claimed_upto: dict[int, int] = {}
        # the deliveries this sender holds in flight: the heartbeat refreshes them by id
        self._held: set[int] = set()
        self._lock = threading.Lock()

    def claim_batch(self, campaign_id: int, limit: int, now: dt.datetime,
                    finished: Sequence[Outcome] = ()) -> Batch:
        """Record `finished` outcomes, then claim up to `limit` due deliveries, in one transaction.

        Opted-out recipients are marked suppressed, not returned. `stopped` when the campaign is
        no longer sending (paused, cancelled); the outcomes are recorded all the same, and
        `paused_reason` says when they themselves paused it."""
        with self.database.session() as session:
            reason = _record(session, campaign_id, finished, now, self.policy_pause) if finished else ""
            if reason:
                batch = Batch(stopped=True, paused_reason=reason)
            elif limit <= 0:
                batch = Batch()
            else:
                batch = self._claim(session, campaign_id, limit, now)
        self._let_go(finished)
        with self._lock:
            self._held.update(recipient.delivery_id for recipient in batch.recipients)
        return batch

    def _claim(self, session: Session, campaign_id: int, limit: int, now: dt.datetime) -> Batch:
        campaign = session.connection().execute(_CAMPAIGN_STATE, {"campaign": campaign_id}).one_or_none()
        if campaign is None or campaign.status is not CampaignStatus.SENDING:
            return Batch(stopped=True)
        claimed = claim_due_deliveries(session, campaign_id, limit, now, self.worker_id,
                                       after=self.claimed_upto.get(campaign_id, 0))
        # moved on even if this transaction fails: rows skipped so are claimed from the start later
        self.claimed_upto[campaign_id] = max(self.claimed_upto.get(campaign_id, 0), claimed.last_pending)
        if not claimed.ids:
            return Batch()
        return _load_recipients(session, claimed.ids, campaign.kind, campaign.list_id, now)

    def _let_go(self, outcomes: Sequence[Outcome]) -> None:
        with self._lock:
            self._held.difference_update(outcome.delivery_id for outcome in outcomes)

    def record_outcomes(self, campaign_id: int, outcomes: Sequence[Outcome], now: dt.datetime) -> str:
        """Write what happened to each claimed delivery in one transaction; suppress hard bounces.

        Returns why the campaign paused when these outcomes passed its share of policy blocks, else ""."""
        if not outcomes:
            return ""
        with self.database.session() as session:
            reason = _record(session, campaign_id, outcomes, now, self.policy_pause)
        self._let_go(outcomes)
        return reason

    def refresh_claims(self, now: dt.datetime) -> None:
        """Heartbeat: our claims are alive, so no other host takes them as in doubt."""
        with self.database.session() as session:
            _refresh(session, self.worker_id, self._holding(), now)

    def heartbeat(self, now: dt.datetime, claim_timeout: float) -> int:
        """Refresh our claims and set aside those of dead senders as in doubt, in one transaction;
        returns how many of theirs were set aside. Any busy sender does it, so a dead one's claims
        never wait for the next cycle of some worker."""
        with self.database.session() as session:
            _refresh(session, self.worker_id, self._holding(), now)
            return mark_abandoned_claims(session, now, claim_timeout)

    def release_lost_claims(self, campaign_id: int, keep: set[int], now: dt.datetime) -> int:
        """Put back in the queue our claims this sender does not know of: a claim whose commit
        went through while the connection dropped before its answer. None of them was sent."""
        with self.database.session() as session:
            result = session.execute(
                sa.update(Delivery)
                .where(Delivery.campaign_id == campaign_id, Delivery.claimed_by == self.worker_id,
                       live_state(DeliveryState.SENDING), Delivery.id.not_in(keep))
                .values(state=DeliveryState.PENDING, claimed_by=None, claimed_at=None, updated_at=now)
                .execution_options(synchronize_session=False)
            )
        with self._lock:
            self._held.intersection_update(keep)
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    def _holding(self) -> list[int]:
        with self._lock:
            return sorted(self._held)

    def pause_campaign(self, campaign_id: int, reason: str) -> None:
        """The relay keeps failing: stop the campaign with a reason the marketer can read."""
        with self.database.session() as session:
            pause_on_failure(session, campaign_id, reason)


def _refresh(session: Session, worker_id: str, held: list[int], now: dt.datetime) -> None:
    # by primary key: every claim and every refresh leaves a dead entry in the in-flight index
    # until the next vacuum, so a walk of our entries there grows with all this sender ever sent.
    # No condition on the state, so no plan can take that index instead: a row we hold is ours
    # while claimed_by says so (an outcome, a release or a suppression clears it).
    if held:
        session.execute(
            sa.update(Delivery)
            .where(Delivery.id.in_(held), Delivery.claimed_by == worker_id)
            .values(claimed_at=now)
            .execution_options(synchronize_session=False)
        )


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


@dataclass(frozen=True)
class Claimed:
    """The deliveries one claim marked as ours, and the highest pending id among them (0: none)."""

    ids: list[int]
    last_pending: int


def claim_due_deliveries(
    session: Session, campaign_id: int, limit: int, now: dt.datetime, worker_id: str, after: int = 0
) -> Claimed:
    """claim_due_deliveries: mark up to `limit` due deferred, then pending rows as sending by us.

    Pending rows are taken in id order after `after`, the sender's last claimed pending id: the
    index scan then starts past the entries its earlier claims left dead, so a claim costs the same
    at the end of a million-row send as at its start. Only when those run short does it look
    before `after`, for rows put back behind it (released claims, in-doubt retries)."""
    connection = session.connection()
    params = {"campaign": campaign_id, "now": now, "worker_id": worker_id, "after": after}

    def claim(statement: sa.Update, wanted: int) -> list[int]:
        return list(connection.execute(statement, {**params, "limit": wanted}).scalars())

    claimed = claim(_CLAIM_RETRIES, limit)
    pending: list[int] = []
    if len(claimed) < limit:
        pending = claim(_CLAIM_PENDING_AFTER, limit - len(claimed))
    if after and len(claimed) + len(pending) < limit:
        pending += claim(_CLAIM_PENDING_UPTO, limit - len(claimed) - len(pending))
    return Claimed(sorted(claimed + pending), max(pending, default=0))


def _claim_where(condition: sa.ColumnElement[bool], order: sa.ColumnElement[Any]) -> sa.Update:
    # one state at a time, in the order of that state's live-work index (deferred by
    # next_attempt_at, pending by id): the index then yields rows in order and the scan stops at
    # LIMIT (an OR of states made every claim sort the whole campaign), and finished deliveries
    # are not in the index.
    # The inner SELECT skips rows another worker holds (PostgreSQL FOR UPDATE SKIP LOCKED), so
    # concurrent workers take disjoint batches without waiting; SQLite ignores the clause, and
    # the session's BEGIN IMMEDIATE makes the claim one writer at a time.
    due = (
        sa.select(_DELIVERIES.c.id)
        .where(_DELIVERIES.c.campaign_id == sa.bindparam("campaign"), condition)
        .order_by(order)
        .limit(sa.bindparam("limit", type_=sa.Integer))
        .with_for_update(skip_locked=True)
    )
    return (
        _DELIVERIES.update()
        .where(_DELIVERIES.c.id.in_(due.scalar_subquery()))
        .values(state=DeliveryState.SENDING, claimed_by=sa.bindparam("worker_id"),
                claimed_at=sa.bindparam("now"), updated_at=sa.bindparam("now"))
        .returning(_DELIVERIES.c.id)
    )


# The statements of a send's every claim, built once: a claim runs every few tens of
# milliseconds, and building and keying a statement cost several times what SQLite does with it.
_DELIVERIES: sa.Table = Delivery.__table__  # type: ignore[assignment]
_CAMPAIGN_STATE = (
    sa.select(Campaign.__table__.c.status, Campaign.__table__.c.kind, Campaign.__table__.c.list_id)
    .where(Campaign.__table__.c.id == sa.bindparam("campaign"))
)
_CLAIM_RETRIES = _claim_where(
    sa.and_(live_state(DeliveryState.DEFERRED), _DELIVERIES.c.next_attempt_at <= sa.bindparam("now")),
    _DELIVERIES.c.next_attempt_at)
_CLAIM_PENDING_AFTER = _claim_where(
    sa.and_(live_state(DeliveryState.PENDING), _DELIVERIES.c.id > sa.bindparam("after")), _DELIVERIES.c.id)
_CLAIM_PENDING_UPTO = _claim_where(
    sa.and_(live_state(DeliveryState.PENDING), _DELIVERIES.c.id <= sa.bindparam("after")), _DELIVERIES.c.id)


def _load_recipients(
    session: Session, ids: list[int], kind: CampaignKind, list_id: int | None, now: dt.datetime
) -> Batch:
    # select_claimed_recipients: one row per claimed delivery with its person and subscription
    connection = session.connection()
    rows = _selected(connection, _CLAIMED_RECIPIENTS, "ids", ids, list_id=list_id)
    hashes = {row[0]: address_hash(row[4]) for row in rows if row[4]}
    # select_suppressions_by_hash: the authority on opt-outs, erased addresses included
    reasons = dict(_selected(connection, _SUPPRESSIONS_BY_HASH, "hashes", list(set(hashes.values())))
                   ) if hashes else {}
    batch = Batch()
    blocked: list[int] = []
    for delivery_id, attempts, subscriber_id, email, _, name, attributes, status, subscribed_at in rows:
        reason = reasons.get(hashes.get(delivery_id, ""))
        if kind is CampaignKind.NOTICE:
            refused = subscriber_id is None or reason in NOTICE_BLOCKING_REASONS
        else:
            refused = subscriber_id is None or reason is not None or status is not SubscriptionStatus.ACTIVE
        if refused:
            blocked.append(delivery_id)
            continue
        batch.recipients.append(Recipient(
            delivery_id=delivery_id, subscriber_id=subscriber_id, email=email, name=name,
            attributes=dict(attributes or {}), subscribed_at=subscribed_at,
        ))
        batch.attempts[delivery_id] = attempts
    if blocked:
        # mark_suppressed_deliveries: opted out after the snapshot; recorded, never sent
        connection.execute(_MARK_SUPPRESSED, {"ids": blocked, "now": now})
        batch.suppressed = len(blocked)
    return batch


class _Select(NamedTuple):
    sql: str
    names: tuple[str, ...] | None  # the parameters in order, or None when the driver takes them by name
    converters: tuple[tuple[int, Callable[[Any], Any]], ...]  # (column, how its type reads it here)


# per kind of database and driver, statement and padded length of its list (see _selected)
_SELECTS: dict[tuple[str, str, str, sa.Select[Any], int], _Select] = {}


def _selected(connection: sa.Connection, statement: sa.Select[Any], listed: str, values: Sequence[Any],
              **params: Any) -> list[list[Any]]:
    """The rows of `statement` with these values in its expanding parameter `listed`, through the
    driver, each column converted as its type reads it on this database.

    A claim cycle runs two such reads for a few tens of rows; SQLAlchemy rendered the list's
    placeholders and processed each row every time, several times SQLite's own work. The list
    is padded with NULLs (never equal to anything) to a power of two, so that a few compiled
    forms serve every length."""
    dialect = connection.dialect
    size = 1 << max(0, len(values) - 1).bit_length()
    key = (dialect.name, dialect.driver, dialect.paramstyle, statement, size)
    select = _SELECTS.get(key)
    if select is None:
        select = _SELECTS[key] = _compile_select(dialect, statement, listed, size, params)
    bound = dict(params)
    bound.update((f"{listed}_{place}", value) for place, value in enumerate(values, 1))
    bound.update((f"{listed}_{place}", None) for place in range(len(values) + 1, size + 1))
    arguments = tuple(bound[name] for name in select.names) if select.names is not None else bound
    rows = [list(row) for row in connection.exec_driver_sql(select.sql, arguments)]
    for place, convert in select.converters:
        for row in rows:
            row[place] = convert(row[place])
    return rows


def _compile_select(dialect: sa.Dialect, statement: sa.Select[Any], listed: str, size: int,
                    params: dict[str, Any]) -> _Select:
    compiled = statement.params({**params, listed: [None] * size}).compile(
        dialect=dialect, compile_kwargs={"render_postcompile": True})
    positional = compiled.positiontup
    converters = ((place, column.type.dialect_impl(dialect).result_processor(dialect, None))
                  for place, column in enumerate(statement.selected_columns))
    return _Select(compiled.string, tuple(positional) if positional else None,
                   tuple((place, convert) for place, convert in converters if convert is not None))


_SUBSCRIBERS: sa.Table = Subscriber.__table__  # type: ignore[assignment]
_SUBSCRIPTIONS: sa.Table = Subscription.__table__  # type: ignore[assignment]
_SUPPRESSIONS: sa.Table = Suppression.__table__  # type: ignore[assignment]
_CLAIMED_RECIPIENTS = (
    sa.select(
        _DELIVERIES.c.id, _DELIVERIES.c.attempts, _SUBSCRIBERS.c.id.label("subscriber_id"), _SUBSCRIBERS.c.email,
        _SUBSCRIBERS.c.email_normalized, _SUBSCRIBERS.c.name, _SUBSCRIBERS.c.attributes,
        _SUBSCRIPTIONS.c.status,
        sa.func.coalesce(_SUBSCRIPTIONS.c.confirmed_at, _SUBSCRIPTIONS.c.consent_at,
                         type_=_SUBSCRIPTIONS.c.confirmed_at.type).label("subscribed_at"),
    )
    .select_from(_DELIVERIES)
    .outerjoin(_SUBSCRIBERS, _SUBSCRIBERS.c.id == _DELIVERIES.c.subscriber_id)
    .outerjoin(_SUBSCRIPTIONS, sa.and_(_SUBSCRIPTIONS.c.subscriber_id == _DELIVERIES.c.subscriber_id,
                                       _SUBSCRIPTIONS.c.list_id == sa.bindparam("list_id")))
    .where(_DELIVERIES.c.id.in_(sa.bindparam("ids", expanding=True)))
    .order_by(_DELIVERIES.c.id)
)
_SUPPRESSIONS_BY_HASH = (
    sa.select(_SUPPRESSIONS.c.address_hash, _SUPPRESSIONS.c.reason)
    .where(_SUPPRESSIONS.c.address_hash.in_(sa.bindparam("hashes", expanding=True)))
)
_MARK_SUPPRESSED = (
    _DELIVERIES.update()
    .where(_DELIVERIES.c.id.in_(sa.bindparam("ids", expanding=True)))
    .values(state=DeliveryState.SUPPRESSED, claimed_by=None, updated_at=sa.bindparam("now"),
            last_response="opted out before its turn")
)


def update_delivery_outcomes(session: Session, outcomes: Sequence[Outcome], now: dt.datetime) -> None:
    """update_delivery_outcomes: one executemany UPDATE by primary key for the whole batch."""
    handed_over = [o for o in outcomes if o.state is not DeliveryState.PENDING]
    released = [o.delivery_id for o in outcomes if o.state is DeliveryState.PENDING]
    connection = session.connection()
    if handed_over:
        _record_outcomes(connection, handed_over, now)
    if released:
        # release_unsent_claims: never handed to the relay (stop signal, relay down): back in the queue
        connection.execute(_RELEASE_UNSENT, {"ids": released, "now": now})


def _record_outcomes(connection: sa.Connection, outcomes: Sequence[Outcome], now: dt.datetime) -> None:
    # the statement compiled once per database, its values made ready for the driver here: every
    # row has the same time and one of three states, and converting each row's values one by
    # one cost more than the database spends writing them
    sql, names, time_of, state_of = _outcome_statement(connection.dialect)
    at = time_of(now)
    rows = [
        {"b_id": o.delivery_id, "b_state": state_of(o.state), "b_code": o.code, "b_response": o.response[:1000],
         "b_next": time_of(o.next_attempt_at) if o.next_attempt_at is not None else None,
         "b_sent": at if o.state is DeliveryState.SENT else None, "now": at}
        for o in outcomes
    ]
    connection.exec_driver_sql(sql, [tuple(row[name] for name in names) for row in rows] if names else rows)


_OutcomeStatement = tuple[str, tuple[str, ...] | None, Callable[[Any], Any], Callable[[Any], Any]]
# per kind of database and driver, not per engine: an engine is made per command and per test
_OUTCOME_STATEMENTS: dict[tuple[str, str, str], _OutcomeStatement] = {}


def _outcome_statement(dialect: sa.Dialect) -> _OutcomeStatement:
    """The outcome UPDATE as the driver takes it: its SQL, the order of its parameters (None when
    they go by name), and how a time and a state are written."""
    key = (dialect.name, dialect.driver, dialect.paramstyle)
    if key not in _OUTCOME_STATEMENTS:
        _OUTCOME_STATEMENTS[key] = _compile_outcome_statement(dialect)
    return _OUTCOME_STATEMENTS[key]


def _compile_outcome_statement(dialect: sa.Dialect) -> _OutcomeStatement:
    compiled = _RECORD_OUTCOME.compile(dialect=dialect)

    def processor(column: sa.Column[Any]) -> Callable[[Any], Any]:
        # the type as this database has it: SQLite's DATETIME writes the text every other write does
        process = column.type.dialect_impl(dialect).bind_processor(dialect)
        return process if process is not None else (lambda value: value)

    positional = compiled.positiontup
    return (compiled.string, tuple(positional) if positional else None, processor(_DELIVERIES.c.updated_at),
            processor(_DELIVERIES.c.state))


_RECORD_OUTCOME = (
    _DELIVERIES.update()
    .where(_DELIVERIES.c.id == sa.bindparam("b_id"))
    .values(
        state=sa.bindparam("b_state"), attempts=_DELIVERIES.c.attempts + sa.literal_column("1"),
        last_code=sa.bindparam("b_code"), last_response=sa.bindparam("b_response"),
        next_attempt_at=sa.bindparam("b_next"), sent_at=sa.bindparam("b_sent"),
        claimed_by=sa.null(), updated_at=sa.bindparam("now"),
    )
)
_RELEASE_UNSENT = (
    _DELIVERIES.update()
    .where(_DELIVERIES.c.id.in_(sa.bindparam("ids", expanding=True)),
           _DELIVERIES.c.state == DeliveryState.SENDING)
    .values(state=DeliveryState.PENDING, claimed_by=None, claimed_at=None, next_attempt_at=None,
            updated_at=sa.bindparam("now"))
)


def mark_abandoned_claims(session: Session, now: dt.datetime, claim_timeout: float) -> int:
    """mark_abandoned_claims: in-flight rows whose sender died become in_doubt; returns how many.

    A claimer on this host is dead when its process is gone; on another host, when it has not
    refreshed its claims for `claim_timeout` seconds.
    """
    host = socket.gethostname()
    claimers = session.execute(
        sa.select(Delivery.claimed_by, sa.func.max(Delivery.claimed_at))
        .where(live_state(DeliveryState.SENDING))
        .group_by(Delivery.claimed_by)
    ).all()
    stale_before = now - dt.timedelta(seconds=claim_timeout)
    dead = [
        claimer for claimer, last_seen in claimers
        if claimer is None or claimer_is_dead(claimer, host) or (last_seen is not None and last_seen < stale_before)
    ]
    if not dead:
        return 0
    condition = sa.or_(Delivery.claimed_by.in_([c for c in dead if c is not None]),
                       Delivery.claimed_by.is_(None))
    result = session.execute(
        sa.update(Delivery)
        .where(live_state(DeliveryState.SENDING), condition)
        .values(state=DeliveryState.IN_DOUBT, updated_at=now,
                last_response="the sender stopped while this message was in flight")
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
