"""`campaign status`: where a campaign stands, its deliveries counted by state, its policy blocks."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from mailer.campaigns import get_campaign
from mailer.delivery.deliveries import count_deliveries
from mailer.models import CampaignStatus, Delivery, DeliveryState
from mailer.policy_blocks import count_policy_blocks


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

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "subject": self.subject, "status": self.status.value, "reason": self.reason,
            "scheduled_at": _iso(self.scheduled_at), "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at), "next_retry_at": _iso(self.next_retry_at),
            "deliveries": {state.value: n for state, n in self.counts.items()},
            "policy_blocks": self.policy_blocks,
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
    return CampaignStatusReport(
        id=campaign.id, subject=campaign.subject, status=campaign.status, reason=campaign.status_reason,
        scheduled_at=campaign.scheduled_at, started_at=campaign.started_at,
        finished_at=campaign.finished_at, counts=count_deliveries(session, campaign_id),
        next_retry_at=next_retry, policy_blocks=count_policy_blocks(session, campaign_id),
    )
