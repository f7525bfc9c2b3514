"""The public archive: sent campaigns the marketer published, as nobody in particular would get them."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from mailer.audit import record_event
from mailer.campaigns import campaign_list, get_campaign
from mailer.config import Config, DkimConfig
from mailer.content.compose import Composer
from mailer.content.containment import CONTAINER_ID, CONTAINER_STYLE
from mailer.errors import InvalidInputError, NotFoundError
from mailer.models import Campaign, CampaignKind, CampaignStatus, MailingList

# the feed and the list page show this many, newest first
ARCHIVE_PAGE_SIZE = 50


@dataclass(frozen=True)
class ArchiveEntry:
    id: int
    subject: str
    list_title: str
    sent_at: dt.datetime


@dataclass(frozen=True)
class ArchivedCampaign:
    entry: ArchiveEntry
    body: str  # the campaign's contained HTML, for inside a box with `container_id` and `container_style`
    css: str  # its kept @media rules, each selecting only inside that box
    container_id: str = CONTAINER_ID
    container_style: str = CONTAINER_STYLE


def set_archived(session: Session, campaign_id: int, archived: bool, actor: str) -> Campaign:
    """Publish a campaign at /archive (it shows once sent), or take it down.

    Raises NotFoundError for an unknown campaign and InvalidInputError for a notice: notices
    are addressed to people, never published.
    """
    campaign = get_campaign(session, campaign_id)
    if campaign.kind is not CampaignKind.CAMPAIGN:
        raise InvalidInputError(f"campaign {campaign_id} is a notice; notices are never published")
    if campaign.archived != archived:
        campaign.archived = archived
        record_event(session, "archive" if archived else "unarchive", actor,
                     reason=f"campaign {campaign_id} {'published' if archived else 'taken down'}",
                     detail={"campaign_id": campaign_id})
    return campaign


def _published() -> sa.Select[Campaign, Any]:
    # only what was sent: a draft or a cancelled campaign never went to anyone
    return (
        sa.select(Campaign, sa.func.coalesce(sa.func.nullif(MailingList.title, ""), MailingList.name))
        .outerjoin(MailingList, MailingList.id == Campaign.list_id)
        .where(Campaign.archived.is_(True), Campaign.status == CampaignStatus.SENT,
               Campaign.kind == CampaignKind.CAMPAIGN)
    )


def _entry(campaign: Campaign, list_title: str | None) -> ArchiveEntry:
    sent_at = campaign.finished_at or campaign.started_at or campaign.created_at
    return ArchiveEntry(campaign.id, campaign.subject, list_title or "", sent_at)


def archive_entries(session: Session, limit: int = ARCHIVE_PAGE_SIZE) -> list[ArchiveEntry]:
    """Published campaigns, newest first."""
    sent = sa.func.coalesce(Campaign.finished_at, Campaign.started_at, Campaign.created_at)
    rows = session.execute(_published().order_by(sent.desc(), Campaign.id.desc()).limit(limit))
    return [_entry(campaign, title) for campaign, title in rows]


def archived_campaign(session: Session, config: Config, campaign_id: int) -> ArchivedCampaign:
    """One published campaign rendered for nobody: no name, no address, no one's unsubscribe token.

    Raises NotFoundError when it is not published, not sent, or not there.
    """
    row = session.execute(_published().where(Campaign.id == campaign_id)).first()
    if row is None:
        raise NotFoundError(f"no published campaign {campaign_id}")
    campaign, title = row
    # nothing is signed here: the web server need not read the DKIM key
    composer = Composer(replace(config, dkim=DkimConfig()), campaign, campaign_list(session, campaign))
    # where the template links to unsubscribe, the reader gets the page that mails them their own link
    html = composer.public_bodies(f"{config.unsubscribe.base_url.rstrip('/')}/preferences")
    return ArchivedCampaign(_entry(campaign, title), html.body, html.css)
