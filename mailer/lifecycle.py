"""The life of a campaign once it goes out: start, schedule, pause, resume, cancel, retry, finish."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.orm import Session

from mailer.audit import cli_actor, record_event
from mailer.campaigns import ensure_stored_campaign_compliant, get_campaign
from mailer.config import Config
from mailer.content.compose import Composer
from mailer.db import Database
from mailer.delivery.deliveries import cancel_queued_deliveries, count_deliveries, snapshot_audience
from mailer.errors import DeliveryError
from mailer.models import Campaign, CampaignKind, CampaignStatus, Delivery, DeliveryState, utcnow

# states in which a delivery may still go out
OPEN_STATES = (DeliveryState.PENDING, DeliveryState.SENDING, DeliveryState.DEFERRED)


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


def start_campaign(session: Session, campaign_id: int, now: dt.datetime | None = None) -> int | None:
    """Move a draft or scheduled campaign to sending and snapshot its audience; returns how many
    deliveries it created, or None when it was already sending (another sender started it).
    Raises DeliveryError in any other state."""
    now = now or utcnow()
    campaign = get_campaign(session, campaign_id)
    if campaign.status is CampaignStatus.SENDING:
        return None
    if campaign.status not in (CampaignStatus.DRAFT, CampaignStatus.SCHEDULED):
        raise _refuse(campaign, "send")
    # start_campaign: only one of several racing senders moves it; the loser sees rowcount 0
    # and, because the snapshot commits in this same transaction, finds every delivery in place
    moved = session.execute(
        sa.update(Campaign)
        .where(Campaign.id == campaign_id, Campaign.status == campaign.status)
        .values(status=CampaignStatus.SENDING, started_at=now, status_reason="")
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    if not moved:
        return None
    session.refresh(campaign)
    created = snapshot_audience(session, campaign, now)
    if campaign.kind is CampaignKind.NOTICE:
        # every command that starts a notice (notice send, campaign send, send-due) passes here,
        # once, in the transaction that starts it: the trail cannot miss a notice or count it twice
        record_event(
            session, "notice", cli_actor(), subject=f"notice {campaign_id}", reason=campaign.notice_reason,
            detail={"notice_id": campaign_id, "subject": campaign.subject, "recipients": created,
                    "started_at": now.isoformat()},
        )
    return created


def start_send(config: Config, database: Database, campaign_id: int, now: dt.datetime | None = None) -> int:
    """Run the compliance gate, then start the campaign (a no-op when already sending).

    Returns how many deliveries are open. Raises ComplianceError, TemplateError or DeliveryError."""
    with database.session() as session:
        campaign = get_campaign(session, campaign_id)
        if campaign.status in (CampaignStatus.DRAFT, CampaignStatus.SCHEDULED):
            # rendered for one subscriber of each kind on the list: a template that fails for
            # some of them is found before the first message, not in the middle of the send
            ensure_stored_campaign_compliant(session, config, campaign)
            Composer(config, campaign, campaign.mailing_list)  # templates that do not compile fail here
        start_campaign(session, campaign_id, now)
        counts = count_deliveries(session, campaign_id)
    return sum(counts[state] for state in OPEN_STATES)


def schedule_campaign(session: Session, campaign_id: int, at: dt.datetime,
                      now: dt.datetime | None = None) -> Campaign:
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
    campaign.status = CampaignStatus.SCHEDULED
    campaign.scheduled_at = at.astimezone(dt.UTC)
    campaign.status_reason = ""
    return campaign


def pause_campaign(session: Session, campaign_id: int, reason: str) -> Campaign:
    """Stop a sending campaign after the batches in flight; `resume` goes on."""
    campaign = get_campaign(session, campaign_id)
    if campaign.status is not CampaignStatus.SENDING:
        raise _refuse(campaign, "pause")
    campaign.status = CampaignStatus.PAUSED
    campaign.status_reason = reason[:1000]
    return campaign


def resume_campaign(session: Session, campaign_id: int) -> Campaign:
    """Let a paused campaign go on where it stopped."""
    campaign = get_campaign(session, campaign_id)
    if campaign.status is not CampaignStatus.PAUSED:
        raise _refuse(campaign, "resume")
    campaign.status = CampaignStatus.SENDING
    campaign.status_reason = ""
    campaign.policy_counted_from = utcnow()
    return campaign


def cancel_campaign(session: Session, campaign_id: int, reason: str) -> int:
    """Stop a campaign for good; returns how many queued deliveries were cancelled."""
    campaign = get_campaign(session, campaign_id)
    if campaign.status in (CampaignStatus.SENT, CampaignStatus.CANCELLED, CampaignStatus.MISSED):
        raise _refuse(campaign, "cancel")
    campaign.status = CampaignStatus.CANCELLED
    campaign.status_reason = reason[:1000]
    campaign.finished_at = utcnow()
    # the campaign row first: a sender recording outcomes now either sees the cancel or holds
    # this until it commits, and the rows it released are then queued for the update below
    session.flush()
    return cancel_queued_deliveries(session, campaign_id, campaign.finished_at)


def retry_campaign(session: Session, campaign_id: int, in_doubt: bool = False) -> int:
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
        campaign.status = CampaignStatus.SENDING
        campaign.finished_at = None
    return count


def finish_if_done(session: Session, campaign_id: int, now: dt.datetime | None = None) -> bool:
    """Mark a sending campaign sent once no delivery can still go out; returns whether it did."""
    open_rows = session.scalar(
        sa.select(sa.func.count()).select_from(Delivery)
        .where(Delivery.campaign_id == campaign_id, Delivery.state.in_(OPEN_STATES))
    )
    if open_rows:
        return False
    moved = session.execute(
        sa.update(Campaign)
        .where(Campaign.id == campaign_id, Campaign.status == CampaignStatus.SENDING)
        .values(status=CampaignStatus.SENT, finished_at=now or utcnow())
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    return bool(moved)
