"""Cron and workers: start scheduled campaigns on time, retry due deliveries, mark missed schedules."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from mailer.config import Config
from mailer.db import Database
from mailer.delivery.claims import mark_abandoned_claims
from mailer.delivery.pipeline import CampaignSender, Renderer, SendReport
from mailer.delivery.progress import SendWatcher
from mailer.errors import DatabaseUnavailable, MailerError
from mailer.lifecycle import (
    MAILER_ACTOR,
    finish_if_done,
    mark_missed,
    pause_on_failure,
    start_campaign,
)
from mailer.models import Campaign, CampaignStatus, Delivery, DeliveryState, utcnow


@dataclass(frozen=True)
class MissedCampaign:
    id: int
    subject: str
    scheduled_at: dt.datetime


@dataclass
class DueReport:
    """What one `send-due` run did."""

    missed: list[MissedCampaign] = field(default_factory=list)
    started: list[int] = field(default_factory=list)
    refused: dict[int, str] = field(default_factory=dict)  # campaign id -> why it could not go out
    in_doubt: int = 0  # in-flight deliveries of dead senders found and set aside
    sends: list[SendReport] = field(default_factory=list)
    interrupted: bool = False

    @property
    def did_anything(self) -> bool:
        return bool(self.missed or self.started or self.refused or self.in_doubt
                    or any(r.handed_over or r.suppressed for r in self.sends))

    def as_dict(self) -> dict[str, Any]:
        return {
            "missed": [{"id": m.id, "subject": m.subject, "scheduled_at": m.scheduled_at.isoformat()}
                       for m in self.missed],
            "started": self.started,
            "refused": {str(k): v for k, v in self.refused.items()},
            "in_doubt": self.in_doubt,
            "sends": [r.__dict__ for r in self.sends],
            "interrupted": self.interrupted,
        }


def mark_missed_campaigns(session: Session, now: dt.datetime, max_lateness: float) -> list[MissedCampaign]:
    """Scheduled campaigns more than `max_lateness` seconds late are not sent: a stale offer or a
    "sale ends today" arriving days later does more harm than good. They become missed."""
    too_old = now - dt.timedelta(seconds=max_lateness)
    late = session.scalars(
        sa.select(Campaign).where(Campaign.status == CampaignStatus.SCHEDULED, Campaign.scheduled_at < too_old)
        .order_by(Campaign.id)
    ).all()
    missed = []
    for campaign in late:
        assert campaign.scheduled_at is not None  # the query selected on it
        late_by = now - campaign.scheduled_at
        reason = (
            f"not sent: its time {campaign.scheduled_at.isoformat()} passed {_human(late_by)} ago, "
            f"more than sending.max_lateness allows; schedule it again to send it"
        )
        # an overlapping run that marked it first reports it; this one does not count it twice
        if mark_missed(session, campaign.id, reason):
            missed.append(MissedCampaign(campaign.id, campaign.subject, campaign.scheduled_at))
    return missed


def _human(delta: dt.timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours:.1f} hours" if hours < 48 else f"{hours / 24:.1f} days"


def due_scheduled_campaigns(session: Session, now: dt.datetime) -> list[int]:
    return list(session.scalars(
        sa.select(Campaign.id).where(Campaign.status == CampaignStatus.SCHEDULED, Campaign.scheduled_at <= now)
        .order_by(Campaign.scheduled_at, Campaign.id)
    ))


def campaigns_with_due_deliveries(session: Session, now: dt.datetime) -> list[int]:
    """select_sendable_campaigns: sending campaigns with a pending row or a deferred one now due."""
    due = sa.select(Delivery.id).where(
        Delivery.campaign_id == Campaign.id,
        sa.or_(
            Delivery.state == DeliveryState.PENDING,
            sa.and_(Delivery.state == DeliveryState.DEFERRED, Delivery.next_attempt_at <= now),
        ),
    )
    return list(session.scalars(
        sa.select(Campaign.id).where(Campaign.status == CampaignStatus.SENDING, sa.exists(due))
        .order_by(Campaign.id)
    ))


def _finish_idle_campaigns(session: Session, now: dt.datetime) -> None:
    for campaign_id in session.scalars(sa.select(Campaign.id).where(Campaign.status == CampaignStatus.SENDING)):
        finish_if_done(session, campaign_id, now)


async def send_due(
    config: Config,
    database: Database,
    *,
    max_seconds: float | None = None,
    handle_signals: bool = False,
    clock: Callable[[], dt.datetime] = utcnow,
    on_batch: Callable[[SendReport], None] | None = None,
    sender: CampaignSender | None = None,
    watch: SendWatcher | None = None,
) -> DueReport:
    """One cron run: mark missed schedules, start due ones, send every due delivery.

    Several runs may overlap (cron every minute, several workers): claims keep them apart. The
    database work runs in the sender's database thread and waits out a short outage
    (database.reconnect_for); past it, DatabaseUnavailable."""
    report = DueReport()
    deadline = time.monotonic() + max_seconds if max_seconds is not None else None
    own_sender = sender is None
    on_batch = on_batch or (watch.on_batch if watch is not None else None)
    active = sender or CampaignSender(config, database, deadline=deadline, handle_signals=handle_signals,
                                      clock=clock, on_batch=on_batch)
    if own_sender:
        await active.__aenter__()
    try:
        await active.calls.call(_start_due, config, database, clock(), report)
        sendable = await active.calls.call(_sendable, database, clock())
        for campaign_id in sendable:
            if active.stopped or (deadline is not None and time.monotonic() >= deadline):
                report.interrupted = True
                break
            await _send_one(active, database, campaign_id, report, watch)
        await active.calls.call(_finish_idle, database, clock())
    finally:
        if own_sender:
            await active.__aexit__(None, None, None)
    return report


def _start_due(config: Config, database: Database, now: dt.datetime, report: DueReport) -> None:
    with database.session() as session:
        report.missed = mark_missed_campaigns(session, now, config.sending.max_lateness)
        report.in_doubt = mark_abandoned_claims(session, now, config.sending.claim_timeout)
        due = due_scheduled_campaigns(session, now)
    for campaign_id in due:
        try:
            with database.session() as session:
                # an overlapping run that started it first reports it; this one only helps send it
                if start_campaign(session, campaign_id, now, actor=MAILER_ACTOR) is not None:
                    report.started.append(campaign_id)
        except MailerError as exc:
            report.refused[campaign_id] = str(exc)


def _sendable(database: Database, now: dt.datetime) -> list[int]:
    with database.session() as session:
        return campaigns_with_due_deliveries(session, now)


def _finish_idle(database: Database, now: dt.datetime) -> None:
    with database.session() as session:
        _finish_idle_campaigns(session, now)


async def _send_one(active: CampaignSender, database: Database, campaign_id: int, report: DueReport,
                    watch: SendWatcher | None) -> None:
    try:
        renderer = await active.calls.inline(active.prepare, campaign_id)
    except DatabaseUnavailable:
        raise
    except MailerError as exc:
        report.refused[campaign_id] = str(exc)
        await active.calls.call(_pause_refused, database, campaign_id, str(exc))
        return
    result = await _watched_send(active, campaign_id, renderer, watch)
    report.sends.append(result)
    report.interrupted = report.interrupted or result.interrupted


async def _watched_send(sender: CampaignSender, campaign_id: int, renderer: Renderer,
                        watch: SendWatcher | None) -> SendReport:
    if watch is not None:
        watch.started(campaign_id)
    result = await sender.send(campaign_id, renderer)
    if watch is not None:
        watch.finished(result)
    return result


def _pause_refused(database: Database, campaign_id: int, reason: str) -> None:
    # a campaign that fails the compliance gate at send time must not be retried every minute
    with database.session() as session:
        pause_on_failure(session, campaign_id, f"refused at send time: {reason}")


async def run_worker(
    config: Config,
    database: Database,
    *,
    poll_seconds: float = 5.0,
    handle_signals: bool = True,
    on_cycle: Callable[[DueReport], None] | None = None,
    max_cycles: int | None = None,
    watch: SendWatcher | None = None,
) -> int:
    """Run send-due cycles until SIGTERM/SIGINT, sleeping `poll_seconds` when idle; returns cycles run."""
    sender = CampaignSender(config, database, handle_signals=handle_signals,
                            on_batch=watch.on_batch if watch is not None else None)
    cycles = 0
    async with sender:
        while not sender.stopped and (max_cycles is None or cycles < max_cycles):
            report = await send_due(config, database, sender=sender, watch=watch)
            cycles += 1
            if on_cycle is not None:
                on_cycle(report)
            if not report.did_anything:
                await _sleep_unless_stopped(sender, poll_seconds)
    return cycles


async def _sleep_unless_stopped(sender: CampaignSender, seconds: float) -> None:
    end = time.monotonic() + seconds
    while not sender.stopped and time.monotonic() < end:
        await asyncio.sleep(min(0.2, max(0.0, end - time.monotonic())))
