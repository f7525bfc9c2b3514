"""The life of a campaign once it goes out: start, schedule, pause, resume, cancel, retry, finish."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from mailer.audit import cli_actor, record_event
from mailer.campaigns import ensure_stored_campaign_compliant, get_campaign
from mailer.config import Config
from mailer.content.compose import Composer
from mailer.db import Database
from mailer.delivery.deliveries import cancel_queued_deliveries, count_deliveries, snapshot_audience
from mailer.errors import DeliveryError
from mailer.models import (
    AuditEvent,
    Campaign,
    CampaignKind,
    CampaignStatus,
    Delivery,
    DeliveryState,
    utcnow,
)

# states in which a delivery may still go out
OPEN_STATES = (DeliveryState.PENDING, DeliveryState.SENDING, DeliveryState.DEFERRED)

# the actor of a transition the mailer makes on its own (a finished send, a missed schedule, a pause)
MAILER_ACTOR = "mailer"

# audit actions, one per transition; README's audit section lists them
STARTED = "campaign_started"
SCHEDULED = "campaign_scheduled"
PAUSED = "campaign_paused"
RESUMED = "campaign_resumed"
CANCELLED = "campaign_cancelled"
RETRIED = "campaign_retried"
FINISHED = "campaign_sent"
MISSED = "campaign_missed"


def _move(session: Session, campaign_id: int, old: CampaignStatus, new: CampaignStatus, action: str,
          actor: str, reason: str = "", **values: Any) -> AuditEvent | None:
    """Every status change passes here: a conditional UPDATE from `old`, audited only when it moved.

    Returns the audit event (its detail may still be added to before the flush), or None when the
    campaign was no longer in `old`."""
    # conditional on the status the caller saw: of two senders or commands racing for the same
    # change, one moves the row and records it, the other changes nothing and records nothing
    moved = session.execute(
        sa.update(Campaign)
        .where(Campaign.id == campaign_id, Campaign.status == old)
        .values(status=new, **values)
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    if not moved:
        return None
    return record_event(session, action, actor, subject=f"campaign {campaign_id}", reason=reason[:1000],
                        detail={"campaign_id": campaign_id, "from": old.value, "to": new.value})


def _add_detail(event: AuditEvent, **detail: Any) -> None:
    # a new dict rather than an update in place, so the JSON column sees the change
    event.detail = {**event.detail, **detail}


def _refuse(campaign: Campaign, action: str) -> DeliveryError:
    why = f" ({campaign.status_reason})" if campaign.status_reason else ""
    hints = {
        CampaignStatus.PAUSED: f"; run `mailer campaign resume {campaign.id}`",
        CampaignStatus.SENT: f"; `mailer campaign retry {campaign.id}` re-sends failed deliveries",
    }
    return DeliveryError(
        f"cannot {action} campaign {campaign.id}: it is {campaign.status.value}{why}"
        f"{hints.get(campaign.status, '')}"
    )


def _move_or_refuse(session: Session, campaign: Campaign, new: CampaignStatus, verb: str, action: str,
                    actor: str | None, reason: str = "", **values: Any) -> AuditEvent:
    # the caller checked the state it read; a command committed meanwhile is refused as if it
    # had been seen first, with the state it left
    event = _move(session, campaign.id, campaign.status, new, action, actor or cli_actor(), reason, **values)
    session.refresh(campaign)
    if event is None:
        raise _refuse(campaign, verb)
    return event


def start_campaign(session: Session, campaign_id: int, now: dt.datetime | None = None,
                   actor: str | None = None) -> int | None:
    """Move a draft or scheduled campaign to sending and snapshot its audience; returns how many
    deliveries it created, or None when it was already sending (another sender started it).
    Raises DeliveryError in any other state."""
    now = now or utcnow()
    campaign = get_campaign(session, campaign_id)
    if campaign.status is CampaignStatus.SENDING:
        return None
    if campaign.status not in (CampaignStatus.DRAFT, CampaignStatus.SCHEDULED):
        raise _refuse(campaign, "send")
    # only one of several racing senders moves it; the loser changes nothing and, because the
    # snapshot commits in this same transaction, finds every delivery in place
    event = _move(session, campaign_id, campaign.status, CampaignStatus.SENDING, STARTED,
                  actor or cli_actor(), started_at=now, status_reason="")
    if event is None:
        return None
    session.refresh(campaign)
    created = snapshot_audience(session, campaign, now)
    _add_detail(event, recipients=created)
    if campaign.kind is CampaignKind.NOTICE:
        # every command that starts a notice (notice send, campaign send, send-due) passes here,
        # once, in the transaction that starts it: the trail cannot miss a notice or count it twice
        record_event(
            session, "notice", cli_actor(), subject=f"notice {campaign_id}", reason=campaign.notice_reason,
            detail={"notice_id": campaign_id, "subject": campaign.subject, "recipients": created,
                    "started_at": now.isoformat()},
        )
    return created


@dataclass(frozen=True)
class StartedSend:
    """A send started in this process."""

    open_deliveries: int
    # the campaign's composer when this start ran the compliance gate, so that a sender in this
    # process neither runs the gate nor compiles the templates a second time; None when the
    # campaign was already sending (resumed), and the sender checks it itself
    checked: Composer | None


def begin_send(config: Config, database: Database, campaign_id: int, now: dt.datetime | None = None) -> StartedSend:
    """Run the compliance gate, then start the campaign (a no-op when already sending).

    Raises ComplianceError, TemplateError or DeliveryError."""
    checked = None
    with database.session() as session:
        campaign = get_campaign(session, campaign_id)
        if campaign.status in (CampaignStatus.DRAFT, CampaignStatus.SCHEDULED):
            # rendered for one subscriber of each kind on the list: a template that fails for
            # some of them is found before the first message, not in the middle of the send
            ensure_stored_campaign_compliant(session, config, campaign)
            checked = Composer(config, campaign, campaign.mailing_list)  # templates that do not compile fail here
        start_campaign(session, campaign_id, now)
        counts = count_deliveries(session, campaign_id)
    return StartedSend(sum(counts[state] for state in OPEN_STATES), checked)


def start_send(config: Config, database: Database, campaign_id: int, now: dt.datetime | None = None) -> int:
    """begin_send() for callers that send elsewhere (a worker, cron): how many deliveries are open."""
    return begin_send(config, database, campaign_id, now).open_deliveries


def schedule_campaign(session: Session, campaign_id: int, at: dt.datetime,
                      now: dt.datetime | None = None, actor: str | None = None) -> Campaign:
    """Schedule a draft (or move a scheduled or missed campaign) to `at`, which must be in the future."""
    now = now or utcnow()
    if at.tzinfo is None:
        raise DeliveryError("a schedule time needs a time zone")
    campaign = get_campaign(session, campaign_id)
    if campaign.status not in (CampaignStatus.DRAFT, CampaignStatus.SCHEDULED, CampaignStatus.MISSED):
        raise _refuse(campaign, "schedule")
    if at <= now:
        raise DeliveryError(
            f"{at.isoformat()} is in the past; use `mailer campaign send {campaign_id}` to send now"
        )
    at = at.astimezone(dt.UTC)
    _move_or_refuse(session, campaign, CampaignStatus.SCHEDULED, "schedule", SCHEDULED, actor,
                    f"for {at.isoformat()}", scheduled_at=at, status_reason="")
    return campaign


def queue_campaign(session: Session, campaign_id: int, now: dt.datetime | None = None,
                   actor: str | None = None) -> Campaign:
    """Make a draft, scheduled or missed campaign due now: the next worker or send-due run starts it.

    A campaign already sending is left as it is (the workers send its rest); any other state is refused."""
    now = now or utcnow()
    campaign = get_campaign(session, campaign_id)
    if campaign.status is CampaignStatus.SENDING:
        return campaign
    if campaign.status not in (CampaignStatus.DRAFT, CampaignStatus.SCHEDULED, CampaignStatus.MISSED):
        raise _refuse(campaign, "queue")
    # due at the moment of the command itself, never refused as past however long the gate took
    _move_or_refuse(session, campaign, CampaignStatus.SCHEDULED, "queue", SCHEDULED, actor,
                    "due now, for the workers", scheduled_at=now.astimezone(dt.UTC), status_reason="")
    return campaign


def pause_campaign(session: Session, campaign_id: int, reason: str, actor: str | None = None) -> Campaign:
    """Stop a sending campaign after the batches in flight; `resume` goes on."""
    campaign = get_campaign(session, campaign_id)
    if campaign.status is not CampaignStatus.SENDING:
        raise _refuse(campaign, "pause")
    _move_or_refuse(session, campaign, CampaignStatus.PAUSED, "pause", PAUSED, actor, reason,
                    status_reason=reason[:1000])
    return campaign


def pause_on_failure(session: Session, campaign_id: int, reason: str, **detail: Any) -> bool:
    """The mailer pauses a sending campaign on its own (the relay keeps failing, too many policy
    blocks, the gate refuses it at send time); returns whether it paused it.

    A marketer's pause or cancel committed meanwhile is left as it is, and nothing is recorded."""
    event = _move(session, campaign_id, CampaignStatus.SENDING, CampaignStatus.PAUSED, PAUSED, MAILER_ACTOR,
                  reason, status_reason=reason[:1000])
    if event is not None and detail:
        _add_detail(event, **detail)
    return event is not None


def resume_campaign(session: Session, campaign_id: int, actor: str | None = None) -> Campaign:
    """Let a paused campaign go on where it stopped."""
    campaign = get_campaign(session, campaign_id)
    if campaign.status is not CampaignStatus.PAUSED:
        raise _refuse(campaign, "resume")
    _move_or_refuse(session, campaign, CampaignStatus.SENDING, "resume", RESUMED, actor,
                    status_reason="", policy_counted_from=utcnow())
    return campaign


def cancel_campaign(session: Session, campaign_id: int, reason: str, actor: str | None = None) -> int:
    """Stop a campaign for good; returns how many queued deliveries were cancelled."""
    campaign = get_campaign(session, campaign_id)
    if campaign.status in (CampaignStatus.SENT, CampaignStatus.CANCELLED, CampaignStatus.MISSED):
        raise _refuse(campaign, "cancel")
    now = utcnow()
    # the campaign row first: a sender recording outcomes now either sees the cancel or holds
    # this until it commits, and the rows it released are then queued for the update below
    event = _move_or_refuse(session, campaign, CampaignStatus.CANCELLED, "cancel", CANCELLED, actor, reason,
                            status_reason=reason[:1000], finished_at=now)
    cancelled = cancel_queued_deliveries(session, campaign_id, now)
    _add_detail(event, deliveries_cancelled=cancelled)
    return cancelled


def retry_campaign(session: Session, campaign_id: int, in_doubt: bool = False, actor: str | None = None) -> int:
    """Queue failed and deferred deliveries again (or, with in_doubt, those a crash left unsure).

    Returns how many; the campaign goes back to sending. Raises DeliveryError for a campaign that
    never went out or was cancelled."""
    campaign = get_campaign(session, campaign_id)
    if campaign.status not in (CampaignStatus.SENDING, CampaignStatus.SENT, CampaignStatus.PAUSED):
        raise _refuse(campaign, "retry")
    states = (DeliveryState.IN_DOUBT,) if in_doubt else (DeliveryState.FAILED, DeliveryState.DEFERRED)
    # requeue_deliveries: attempts start again so a retried message gets its full retry_for
    count = int(session.execute(
        sa.update(Delivery)
        .where(Delivery.campaign_id == campaign_id, Delivery.state.in_(states))
        .values(state=DeliveryState.PENDING, attempts=0, next_attempt_at=None, claimed_by=None,
                updated_at=utcnow())
        .execution_options(synchronize_session=False)
    ).rowcount)  # type: ignore[attr-defined]
    if count and campaign.status is CampaignStatus.SENT:
        which = "in doubt" if in_doubt else "failed or deferred"
        event = _move(session, campaign_id, CampaignStatus.SENT, CampaignStatus.SENDING, RETRIED,
                      actor or cli_actor(), f"{count} {which} deliveries queued again", finished_at=None)
        if event is not None:
            _add_detail(event, requeued=count)
        session.refresh(campaign)
    return count


def finish_if_done(session: Session, campaign_id: int, now: dt.datetime | None = None) -> bool:
    """Mark a sending campaign sent once no delivery can still go out; returns whether it did."""
    open_rows = session.scalar(
        sa.select(sa.func.count()).select_from(Delivery)
        .where(Delivery.campaign_id == campaign_id, Delivery.state.in_(OPEN_STATES))
    )
    if open_rows:
        return False
    event = _move(session, campaign_id, CampaignStatus.SENDING, CampaignStatus.SENT, FINISHED, MAILER_ACTOR,
                  "no delivery left to send", finished_at=now or utcnow())
    return event is not None


def mark_missed(session: Session, campaign_id: int, reason: str) -> bool:
    """A scheduled campaign whose time passed too long ago is not sent; returns whether this call
    marked it (of overlapping cron runs, one does)."""
    return _move(session, campaign_id, CampaignStatus.SCHEDULED, CampaignStatus.MISSED, MISSED, MAILER_ACTOR,
                 reason, status_reason=reason[:1000]) is not None
