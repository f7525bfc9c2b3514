"""`mailer demo`: the whole flow on a fresh machine, through the real pipeline to a capture server."""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import mailbox
import re
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailer.campaigns import create_campaign
from mailer.config import Config, load_config
from mailer.db import Database
from mailer.delivery.pipeline import CampaignSender, SendReport
from mailer.errors import MailerError
from mailer.lifecycle import begin_send
from mailer.models import SuppressionReason
from mailer.recipients.lists import create_list
from mailer.recipients.subscribers import Consent, add_subscriber
from mailer.recipients.suppression import suppress_address

DEMO_MARKER = ".mailer-demo"  # only a directory holding this is ever cleared by a new demo run
DEMO_PEOPLE = [
    ("ana.souza@example.com", "Ana Souza", "Lisbon"),
    ("bo.lindqvist@example.com", "Bo Lindqvist", "Malmö"),
    ("chidi.okafor@example.com", "Chidi Okafor", "Lagos"),
    ("dana.kim@example.com", "Dana Kim", "Seoul"),
    ("eli.martin@example.com", "Éli Martin", "Lyon"),
    ("farah.haddad@example.com", "Farah Haddad", ""),
    ("gus.ortega@example.com", "Gus Ortega", "Laguna Beach"),
]
OPTED_OUT = ("hana.sato@example.com", "Hana Sato", "Kyoto")  # unsubscribed before the send
DEMO_SUBJECT = "Welcome to Harmony News"
DEMO_TEMPLATE = "welcome"

DEMO_CONFIG = """\
# written by `mailer demo`; every key is documented in config.example.toml
[database]
url = "sqlite:///{db}"

[unsubscribe]
secret_keys = ["{key}"]

[smtp]
host = "127.0.0.1"
port = {port}
starttls = "off"  # the capture server is on loopback
timeout = 10
"""


@dataclass(frozen=True)
class DemoResult:
    directory: Path
    config_path: Path
    maildir: Path
    list_name: str
    subscribers: int
    audience: int  # deliveries the send snapshotted: active and not suppressed
    campaign_id: int
    report: SendReport
    seconds: float
    captured: int
    unsubscribe_url: str
    unsubscribe_for: str
    smtp_port: int

    @property
    def local_unsubscribe_url(self) -> str:
        """The same link served by `mailer serve` on this machine."""
        return "http://127.0.0.1:8080/u/" + self.unsubscribe_url.rpartition("/u/")[2]


class _MaildirHandler:
    """aiosmtpd handler: every accepted message goes, byte for byte, into a Maildir."""

    def __init__(self, path: Path) -> None:
        self.maildir = mailbox.Maildir(path, create=True)
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.maildir.add(bytes(envelope.original_content))
        return "250 2.0.0 OK: captured"


@contextmanager
def capture_server(maildir: Path) -> Iterator[int]:
    """An aiosmtpd SMTP server on a free loopback port writing to `maildir`; yields the port."""
    try:
        from aiosmtpd.controller import Controller
    except ImportError:
        raise MailerError(
            "mailer demo needs aiosmtpd for its capture server: pip install 'harmony-mailer[demo]'"
        ) from None
    # aiosmtpd's start() checks the port it was given, so ask the kernel for a free one first
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    controller = Controller(_MaildirHandler(maildir), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port
    finally:
        controller.stop()


def prepare_directory(directory: Path) -> None:
    """Create the demo directory, or clear one an earlier demo made; never touch anything else."""
    if directory.exists() and any(directory.iterdir()):
        if not (directory / DEMO_MARKER).exists():
            raise MailerError(
                f"{directory} exists and was not made by `mailer demo`; choose another with --dir"
            )
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / DEMO_MARKER).write_text("made by `mailer demo`; a new demo run replaces this directory\n",
                                         encoding="utf-8")


def seed(database: Database, config: Config) -> tuple[int, int]:
    """A sample list and subscribers, one of whom opted out; then the shipped example campaign."""
    consent = Consent(source="mailer demo")
    with database.session() as session:
        create_list(session, "news", "Harmony News")
        for address, name, city in [*DEMO_PEOPLE, OPTED_OUT]:
            add_subscriber(session, address, "news", consent, name=name,
                           attributes={"city": city} if city else {})
        # she clicked an unsubscribe link earlier: the send must skip her
        suppress_address(session, OPTED_OUT[0], SuppressionReason.UNSUBSCRIBED, "demo")
        created = create_campaign(session, config, list_name="news", subject=DEMO_SUBJECT,
                                  template=DEMO_TEMPLATE)
        return created.campaign.id, len(DEMO_PEOPLE) + 1


def first_unsubscribe_link(maildir: Path) -> tuple[str, str]:
    """The https/http link of List-Unsubscribe in a captured message, and whom it unsubscribes."""
    box = mailbox.Maildir(maildir, create=False)
    parser = email.parser.BytesParser(policy=email.policy.default)
    for key in sorted(box.keys()):
        message = parser.parsebytes(box.get_bytes(key), headersonly=True)
        match = re.search(r"<(https?://[^>]+)>", str(message.get("List-Unsubscribe", "")))
        if match:
            return match.group(1), str(message.get("To", ""))
    raise MailerError(f"no captured message in {maildir} carries a List-Unsubscribe link")


def run_demo(directory: Path) -> DemoResult:
    """Build the demo in `directory` and send its campaign through the real pipeline."""
    directory = directory.resolve()
    prepare_directory(directory)
    maildir = directory / "maildir"
    db_path = directory / "mailer.db"
    config_path = directory / "mailer.toml"
    with capture_server(maildir) as port:
        config_path.write_text(
            DEMO_CONFIG.format(db=db_path.as_posix(), key=secrets.token_urlsafe(32), port=port),
            encoding="utf-8",
        )
        config = load_config(config_path, environ={})
        database = Database(config.database.url)
        try:
            database.upgrade()
            campaign_id, subscribers = seed(database, config)
            started = time.monotonic()
            begun = begin_send(config, database, campaign_id)
            audience = begun.open_deliveries

            async def send() -> SendReport:
                async with CampaignSender(config, database, handle_signals=True) as sender:
                    return await sender.send(campaign_id, checked=begun.checked)

            report = asyncio.run(send())
            seconds = time.monotonic() - started
        finally:
            database.dispose()
    url, recipient = first_unsubscribe_link(maildir)
    return DemoResult(
        directory=directory, config_path=config_path, maildir=maildir, list_name="news",
        subscribers=subscribers, audience=audience, campaign_id=campaign_id, report=report, seconds=seconds,
        captured=len(mailbox.Maildir(maildir, create=False)), unsubscribe_url=url,
        unsubscribe_for=recipient, smtp_port=port,
    )
