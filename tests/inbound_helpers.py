"""The world the inbound tests run in: a sent campaign, its deliveries, and provider mail made for them."""

from __future__ import annotations

import io
from pathlib import Path

from recipient_helpers import Person, add_person, make_lists

from mailer.config import Config
from mailer.db import Database
from mailer.inbound.process import InboundReport, process_inbound
from mailer.models import Campaign, CampaignStatus, Delivery, DeliveryState
from mailer.verp import make_return_path

FIXTURES = Path(__file__).parent / "fixtures" / "inbound"


def make_campaign(database: Database, list_id: int, subject: str = "Our autumn collection is here") -> int:
    with database.session() as session:
        campaign = Campaign(list_id=list_id, subject=subject, from_address="news@harmonymails.com",
                            html_template="<html><body>Hi</body></html>", status=CampaignStatus.SENT)
        session.add(campaign)
        session.flush()
        return campaign.id


def make_delivery(database: Database, campaign_id: int, person: Person,
                  state: DeliveryState = DeliveryState.SENT) -> int:
    with database.session() as session:
        delivery = Delivery(campaign_id=campaign_id, subscriber_id=person.subscriber_id, state=state,
                            attempts=1, last_code=250)
        session.add(delivery)
        session.flush()
        return delivery.id


def delivery_row(database: Database, delivery_id: int) -> Delivery:
    with database.session() as session:
        delivery = session.get(Delivery, delivery_id)
        assert delivery is not None
        return delivery


def render(name: str, config: Config, person: Person, delivery_id: int, campaign_id: int | None,
           verp: str | None = None) -> bytes:
    text = (FIXTURES / f"{name}.eml").read_text(encoding="utf-8")
    text = (text.replace("{{VERP}}", verp or make_return_path(config, delivery_id))
                .replace("{{RCPT}}", person.email)
                .replace("{{TOKEN}}", person.token(config, campaign_id=campaign_id)))
    assert "{{" not in text
    return text.encode("utf-8")


def process_bytes(database: Database, config: Config, raw: bytes) -> InboundReport:
    return process_inbound(database, config, io.BytesIO(raw))


class World:
    """Ana has received campaign 1; Bob is on the same list and must never be touched."""

    def __init__(self, database: Database, config: Config) -> None:
        self.database = database
        self.config = config
        lists = make_lists(database, "news", "offers")
        self.ana = add_person(database, "ana@example.net", "news", "offers")
        self.bob = add_person(database, "bob@example.org", "news")
        self.campaign_id = make_campaign(database, lists["news"])
        self.delivery_id = make_delivery(database, self.campaign_id, self.ana)
        self.bob_delivery = make_delivery(database, self.campaign_id, self.bob)

    def fixture(self, name: str, person: Person | None = None, delivery_id: int | None = None,
                campaign_id: int | None = None, verp: str | None = None) -> bytes:
        return render(name, self.config, person or self.ana, delivery_id or self.delivery_id,
                      campaign_id or self.campaign_id, verp)

    def process(self, *names: str) -> InboundReport:
        report = InboundReport()
        for name in names:
            report.items += process_bytes(self.database, self.config, self.fixture(name)).items
        return report
