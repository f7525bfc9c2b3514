"""Builders for composer tests: configs, unsaved campaigns, a DKIM key and its DNS lookup."""

from __future__ import annotations

import datetime as dt
import email.parser
import email.policy
import functools
import re
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from mailer.config import Config, config_from_dict
from mailer.content.compose import Composer, Recipient, RenderedMessage
from mailer.content.dkim import DnsRecord, generate_key
from mailer.models import Campaign, CampaignKind, MailingList

SECRET = "compose-test-key-0123456789abcdef"
OLD_SECRET = "older-compose-key-0123456789abcdef"

HTML = """<h1>Hello {{ subscriber.name or "friend" }}</h1>
<p>Our {{ campaign.list_title }} news{% if subscriber.attributes.get("city") %} for {{ subscriber.attributes.city }}{% endif %}.</p>
<p><a href="https://harmonymails.com/shop">Visit the shop</a></p>
"""
TEXT = """Hello {{ subscriber.name or "friend" }}
Our {{ campaign.list_title }} news{% if subscriber.attributes.get("city") %} for {{ subscriber.attributes.city }}{% endif %}.
Visit the shop: https://harmonymails.com/shop
"""


def make_config(secret_keys: tuple[str, ...] = (SECRET,), dkim_key: Path | None = None, **sections: Any) -> Config:
    data: dict[str, Any] = {"unsubscribe": {"secret_keys": list(secret_keys)}, **sections}
    if dkim_key is not None:
        data["dkim"] = {"domain": "harmonymails.com", "selector": "hm1", "private_key": str(dkim_key)}
    return config_from_dict(data)


def make_list(list_id: int = 3, name: str = "news", title: str = "Harmony News") -> MailingList:
    return MailingList(id=list_id, name=name, title=title, double_opt_in=False)


def make_campaign(
    html: str = HTML,
    text: str | None = TEXT,
    subject: str = "Spring concerts are here",
    *,
    campaign_id: int = 7,
    kind: CampaignKind = CampaignKind.CAMPAIGN,
    from_address: str = "Harmony Mails <news@harmonymails.com>",
    notice_reason: str = "",
) -> Campaign:
    return Campaign(
        id=campaign_id, kind=kind, list_id=None if kind is CampaignKind.NOTICE else 3, subject=subject, from_address=from_address,
        template_name="test", html_template=html, text_template=text, notice_reason=notice_reason,
    )


def make_recipient(
    subscriber_id: int = 11,
    email: str = "ana@example.com",
    name: str = "Ana Lima",
    attributes: dict[str, Any] | None = None,
    delivery_id: int = 501,
    subscribed_at: dt.datetime | None = dt.datetime(2026, 3, 3, 9, 30, tzinfo=dt.UTC),
) -> Recipient:
    return Recipient(
        delivery_id=delivery_id, subscriber_id=subscriber_id, email=email, name=name,
        attributes=attributes if attributes is not None else {"city": "Lisbon"}, subscribed_at=subscribed_at,
    )


def render(config: Config | None = None, campaign: Campaign | None = None, recipient: Recipient | None = None,
           *, mailing_list: MailingList | None = None, test: bool = False) -> RenderedMessage:
    composer = Composer(config or make_config(), campaign or make_campaign(),
                        mailing_list if mailing_list is not None else make_list(), test=test)
    return composer.render(recipient or make_recipient())


def parse(data: bytes) -> EmailMessage:
    message = email.parser.BytesParser(policy=email.policy.default).parsebytes(data)
    assert isinstance(message, EmailMessage)
    return message


def parts(message: EmailMessage) -> tuple[str, str]:
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert isinstance(text, EmailMessage) and isinstance(html, EmailMessage)
    return str(text.get_content()).replace("\r\n", "\n"), str(html.get_content()).replace("\r\n", "\n")


def header_names(data: bytes) -> list[str]:
    """The names of the top-level header fields exactly as they are in the bytes."""
    head = data.split(b"\r\n\r\n", 1)[0].decode("ascii")
    return [line.split(":", 1)[0] for line in head.split("\r\n") if line and line[0] not in " \t"]


def token_of(url: str) -> str:
    return url.rpartition("/u/")[2]


def list_unsubscribe_urls(message: EmailMessage) -> list[str]:
    return re.findall(r"<([^>]+)>", " ".join(str(message["List-Unsubscribe"]).split()))


@functools.cache
def dkim_key(directory: str) -> DnsRecord:
    """A 2048-bit key in `directory`/hm1.pem, generated once per directory."""
    return generate_key(Path(directory) / "hm1.pem", "harmonymails.com", "hm1")


def dns_for(record: DnsRecord) -> Callable[..., bytes]:
    """A dkimpy `dnsfunc` that answers with the TXT record `mailer dkim keygen` says to publish."""

    def lookup(name: bytes, timeout: int = 5) -> bytes:
        if name.decode().rstrip(".") == record.name:
            return record.value.encode("ascii")
        return b""

    return lookup
