"""`campaign status`: where a campaign stands, its deliveries counted by state, and what came back."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from mailer.campaigns import get_campaign
from mailer.delivery.deliveries import count_deliveries
from mailer.models import (
    AuditEvent,
    BounceEvent,
    BounceKind,
    CampaignStatus,
    Delivery,
    DeliveryState,
)
from mailer.policy_blocks import count_policy_blocks

# Gmail's and Yahoo's bulk-sender rules: spam complaints stay under 0.3% of delivered mail
COMPLAINT_RATE_LIMIT = 0.003


@dataclass(frozen=True)
class Returns:
    """What came back for one campaign, from DSNs, feedback loops, webhooks and unsubscribe links."""

    hard_bounces: int = 0  # the mailbox is gone; the address is suppressed
    soft_bounces: int = 0  # failed for now or not for the mailbox; counted toward sending.soft_bounce_limit
    policy_blocks: int = 0  # refused for the sender's sake (5.7.x); nobody suppressed
    complaints: int = 0  # reported as spam
    unsubscribes: int = 0  # opted out by a link, one-click, mail or the provider's own link
    delivered: int = 0  # deliveries the relay took that did not fail later: the complaint rate's base

    @property
    def complaint_rate(self) -> float | None:
        """Complaints per delivered message; None before anything was delivered."""
        return self.complaints / self.delivered if self.delivered else None

    @property
    def complaint_rate_too_high(self) -> bool:
        rate = self.complaint_rate
        return rate is not None and rate > COMPLAINT_RATE_LIMIT

    def as_dict(self) -> dict[str, Any]:
        return {"hard_bounces": self.hard_bounces, "soft_bounces": self.soft_bounces,
                "policy_blocks": self.policy_blocks, "complaints": self.complaints,
                "unsubscribes": self.unsubscribes, "complaint_rate": self.complaint_rate,
                "complaint_rate_limit": COMPLAINT_RATE_LIMIT, "complaint_rate_too_high": self.complaint_rate_too_high}


@dataclass(frozen=True)
class CampaignStatusReport:
    """`campaign status`: where the campaign stands and its deliveries counted by state."""

    id: int
    subject: str
    status: CampaignStatus
    reason: str
    scheduled_at: dt.datetime | None
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    counts: dict[DeliveryState, int]
    next_retry_at: dt.datetime | None
    policy_blocks: int = 0  # deliveries refused by policy (5.7.x), at send time or by a later DSN
    returns: Returns = Returns()

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "subject": self.subject, "status": self.status.value, "reason": self.reason,
            "scheduled_at": _iso(self.scheduled_at), "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at), "next_retry_at": _iso(self.next_retry_at),
            "deliveries": {state.value: n for state, n in self.counts.items()},
            "policy_blocks": self.policy_blocks,
            "returns": self.returns.as_dict(),
        }


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def campaign_status(session: Session, campaign_id: int) -> CampaignStatusReport:
    """Counts by delivery state and the campaign's own state and reason."""
    campaign = get_campaign(session, campaign_id)
    next_retry = session.scalar(
        sa.select(sa.func.min(Delivery.next_attempt_at))
        .where(Delivery.campaign_id == campaign_id, Delivery.state == DeliveryState.DEFERRED)
    )
    counts = count_deliveries(session, campaign_id)
    policy_blocks = count_policy_blocks(session, campaign_id)
    return CampaignStatusReport(
        id=campaign.id, subject=campaign.subject, status=campaign.status, reason=campaign.status_reason,
        scheduled_at=campaign.scheduled_at, started_at=campaign.started_at,
        finished_at=campaign.finished_at, counts=counts, next_retry_at=next_retry, policy_blocks=policy_blocks,
        returns=count_returns(session, campaign_id, counts[DeliveryState.SENT], policy_blocks),
    )


def count_returns(session: Session, campaign_id: int, delivered: int, policy_blocks: int) -> Returns:
    """count_returns: the campaign's bounces and complaints by kind, and the opt-outs its links made."""
    kinds: dict[BounceKind, int] = {kind: count for kind, count in session.execute(
        sa.select(BounceEvent.kind, sa.func.count()).where(BounceEvent.campaign_id == campaign_id)
        .group_by(BounceEvent.kind))}
    # every opt-out names the campaign its link came from; a complaint's is counted as a complaint
    unsubscribes = session.scalar(
        sa.select(sa.func.count()).select_from(AuditEvent)
        .where(AuditEvent.action == "unsubscribe", AuditEvent.reason != "complaint",
               AuditEvent.detail["campaign_id"].as_integer() == campaign_id)) or 0
    return Returns(hard_bounces=kinds.get(BounceKind.HARD, 0), soft_bounces=kinds.get(BounceKind.SOFT, 0),
                   policy_blocks=policy_blocks, complaints=kinds.get(BounceKind.COMPLAINT, 0),
                   unsubscribes=unsubscribes, delivered=delivered)
