"""Policy blocks per campaign: counted from send-time replies and DSNs alike, and enough of them pause it."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from mailer.addresses import ANY_ADDRESS
from mailer.config import SendingConfig
from mailer.models import BounceEvent, BounceKind, Campaign, CampaignStatus, Delivery


@dataclass(frozen=True)
class PolicyPauseRule:
    """sending.policy_block_pause_share of the deliveries tried, once at least `minimum` were tried."""

    share: float = 0.05  # 0 turns the pause off
    minimum: int = 20

    @classmethod
    def from_config(cls, sending: SendingConfig) -> PolicyPauseRule:
        return cls(sending.policy_block_pause_share, sending.policy_block_pause_min)


def record_policy_block(session: Session, delivery_id: int, campaign_id: int, address_hash: str,
                        status: str, diagnostic: str, now: dt.datetime) -> bool:
    """One policy event per delivery, however often it is refused; False when it was counted already."""
    if session.scalar(sa.select(BounceEvent.id).where(BounceEvent.delivery_id == delivery_id,
                                                      BounceEvent.kind == BounceKind.POLICY)):
        return False
    session.add(BounceEvent(kind=BounceKind.POLICY, delivery_id=delivery_id, campaign_id=campaign_id,
                            address_hash=address_hash, status=status[:20], diagnostic=diagnostic[:1000],
                            created_at=now))
    session.flush()
    return True


def count_policy_blocks(session: Session, campaign_id: int, since: dt.datetime | None = None) -> int:
    """count_policy_blocks: the campaign's deliveries refused by policy, at send time or by DSN."""
    query = sa.select(sa.func.count()).select_from(BounceEvent).where(
        BounceEvent.campaign_id == campaign_id, BounceEvent.kind == BounceKind.POLICY)
    if since is not None:
        query = query.where(BounceEvent.created_at >= since)
    return session.scalar(query) or 0


def _count_tried(session: Session, campaign_id: int, since: dt.datetime | None) -> int:
    # count_tried_deliveries: handed to the relay at least once (a DSN-failed one was too)
    query = sa.select(sa.func.count()).select_from(Delivery).where(
        Delivery.campaign_id == campaign_id, Delivery.attempts > 0)
    if since is not None:
        query = query.where(Delivery.updated_at >= since)
    return session.scalar(query) or 0


def pause_for_policy_blocks(session: Session, campaign_id: int, rule: PolicyPauseRule) -> str:
    """Pause a sending campaign when its share of policy blocks passes the rule; returns the reason or "".

    Only what happened since the campaign started or was last resumed is weighed, so a resumed
    campaign is not paused again at once by the blocks that paused it."""
    if rule.share <= 0:
        return ""
    campaign = session.execute(
        sa.select(Campaign.status, Campaign.policy_counted_from).where(Campaign.id == campaign_id)
    ).one_or_none()
    if campaign is None or campaign.status is not CampaignStatus.SENDING:
        return ""
    since = campaign.policy_counted_from
    tried = _count_tried(session, campaign_id, since)
    if tried < rule.minimum:
        return ""
    blocked = count_policy_blocks(session, campaign_id, since)
    if blocked < rule.share * tried:
        return ""
    example = session.execute(
        sa.select(BounceEvent.status, BounceEvent.diagnostic)
        .where(BounceEvent.campaign_id == campaign_id, BounceEvent.kind == BounceKind.POLICY)
        .order_by(BounceEvent.id.desc()).limit(1)
    ).one()
    said = example.diagnostic if example.status in example.diagnostic else f"{example.status} {example.diagnostic}"
    # "smtp; 550 ..." as a DSN writes it: the diagnostic type means nothing to the marketer
    said = re.sub(r"^[\w-]+;\s*", "", " ".join(said.split()))
    # the reason is kept on the campaign and in the audit trail, which outlive any one recipient
    said = ANY_ADDRESS.sub("recipient", said)[:160]
    reason = (f"{blocked} of {tried} deliveries were refused by policy (e.g. {said}): check your "
              f"sending reputation and DNS (SPF, DKIM, DMARC), then `mailer campaign resume {campaign_id}`")
    # imported here: lifecycle brings the compliance gate and the templates, which a DSN piped in
    # by the MTA loads only when it pauses a campaign (lifecycle never imports this module)
    from mailer.lifecycle import pause_on_failure

    if not pause_on_failure(session, campaign_id, reason, policy_blocks=blocked, tried=tried):
        return ""  # a marketer's pause or cancel committed meanwhile
    return reason
