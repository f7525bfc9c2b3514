"""Builders for sending tests: many subscribers at once, a ready campaign, a config for a test relay."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from cli_helpers import write_config
from smtp_faults import FaultyServer

from mailer.config import Config, load_config
from mailer.db import Database, normalize_email
from mailer.models import (
    Campaign,
    CampaignStatus,
    Delivery,
    DeliveryState,
    MailingList,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    utcnow,
)

HTML = "<p>Hello {{ subscriber.name or 'there' }},</p><p>Our winter range is in the shop now.</p>"


def sending_config(path: Path, db_url: str, server: FaultyServer, *, connections: int = 2, timeout: float = 5,
                   retry_for: float | None = None, max_errors: int | None = None, rate: float = 0,
                   batch_size: int = 100, extra: str = "") -> Path:
    """A mailer.toml for the given database and test relay, with the sending limits a test needs."""
    smtp = [f'host = "{server.host}"', f"port = {server.port}", 'starttls = "off"',
            f"timeout = {timeout}", f"connections = {connections}", f"messages_per_second = {rate}"]
    if retry_for is not None:
        smtp.append(f"retry_for = {retry_for}")
    if max_errors is not None:
        smtp.append(f"max_consecutive_errors = {max_errors}")
    return write_config(path, db_url, extra="[smtp]\n" + "\n".join(smtp)
                        + f"\n\n[sending]\nbatch_size = {batch_size}\n\n{extra}")


def configure(tmp_path: Path, database: Database, server: FaultyServer, **limits: Any) -> Config:
    """The loaded config of `sending_config` in tmp_path."""
    return load_config(sending_config(tmp_path / "mailer.toml", database.url, server, **limits), environ={})


def add_audience(database: Database, list_name: str, emails: list[str],
                 status: SubscriptionStatus = SubscriptionStatus.ACTIVE) -> int:
    """Create the list if needed and subscribe every address to it in two bulk inserts; returns the list id."""
    now = utcnow()
    with database.session() as session:
        list_id = session.scalar(sa.select(MailingList.id).where(MailingList.name == list_name))
        if list_id is None:
            mailing_list = MailingList(name=list_name, title="Harmony News")
            session.add(mailing_list)
            session.flush()
            list_id = mailing_list.id
        session.execute(sa.insert(Subscriber), [
            {"email": e, "email_normalized": normalize_email(e), "name": f"Person {i}", "attributes": {},
             "created_at": now, "updated_at": now}
            for i, e in enumerate(emails)
        ])
        ids = dict(session.execute(
            sa.select(Subscriber.email_normalized, Subscriber.id)
            .where(Subscriber.email_normalized.in_([normalize_email(e) for e in emails]))
        ).all())
        session.execute(sa.insert(Subscription), [
            {"subscriber_id": ids[normalize_email(e)], "list_id": list_id, "status": status,
             "consent_at": now, "consent_source": "test", "confirmed_at": now, "created_at": now}
            for e in emails
        ])
    return int(list_id)


def make_campaign(database: Database, list_id: int | None, subject: str = "Our winter range is here",
                  status: CampaignStatus = CampaignStatus.DRAFT, **fields: Any) -> int:
    with database.session() as session:
        campaign = Campaign(
            list_id=list_id, subject=subject, from_address="Harmony Mails <news@harmonymails.com>",
            template_name="test", html_template=HTML, text_template=None, status=status, **fields,
        )
        session.add(campaign)
        session.flush()
        return campaign.id


def delivery_states(database: Database, campaign_id: int) -> dict[str, Delivery]:
    """address -> its delivery row for the campaign."""
    with database.session() as session:
        rows = session.execute(
            sa.select(Subscriber.email_normalized, Delivery)
            .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
            .where(Delivery.campaign_id == campaign_id)
        ).all()
        for _, delivery in rows:
            session.expunge(delivery)
    return dict(rows)


def state_counts(database: Database, campaign_id: int) -> dict[DeliveryState, int]:
    with database.session() as session:
        return dict(session.execute(
            sa.select(Delivery.state, sa.func.count()).where(Delivery.campaign_id == campaign_id)
            .group_by(Delivery.state)
        ).all())


def campaign_row(database: Database, campaign_id: int) -> Campaign:
    with database.session() as session:
        campaign = session.get(Campaign, campaign_id)
        assert campaign is not None
        session.expunge(campaign)
        return campaign


def emails(n: int, prefix: str = "person") -> list[str]:
    return [f"{prefix}{i:05d}@example.com" for i in range(n)]
