"""The whole loop: a real send, then the links and addresses in the sent mail, then the next send."""

from __future__ import annotations

import email
import email.policy
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

from cli_helpers import Cli, write_config
from smtp_faults import FaultyServer

from mailer.config import load_config
from mailer.db import Database
from mailer.inbound.process import InboundKind, process_inbound
from mailer.web.app import create_app

FIXTURES = Path(__file__).parent / "fixtures" / "inbound"


def recipients_of(smtp_server: FaultyServer) -> dict[str, email.message.EmailMessage]:
    """The last message each address received, by address."""
    found: dict[str, email.message.EmailMessage] = {}
    for received in smtp_server.messages:
        message = email.message_from_bytes(received.data, policy=email.policy.default)
        for rcpt in received.rcpt_tos:
            found[rcpt] = message  # type: ignore[assignment]
    return found


def test_one_click_mailto_and_bounce_from_real_messages_keep_the_next_campaign_away(
    tmp_path: Path, database: Database, smtp_server: FaultyServer
) -> None:
    cli = Cli(write_config(tmp_path / "mailer.toml", database.url, smtp_server))
    config = load_config(cli.config_path, environ={})
    cli("list", "create", "news", "--title", "Harmony News")
    for address in ("ana@example.com", "bob@example.com", "cid@example.com", "dee@example.com"):
        cli("subscriber", "add", address, "--list", "news")
    first = cli("campaign", "create", "--list", "news", "--subject", "Autumn news", "--template", "welcome")
    cli("campaign", "send", first.output.strip().splitlines()[-1])
    sent = recipients_of(smtp_server)
    assert set(sent) == {"ana@example.com", "bob@example.com", "cid@example.com", "dee@example.com"}

    # Ana presses her mail client's unsubscribe button: the https link of List-Unsubscribe
    https_link, mailto_link = re.findall(r"<([^>]+)>", str(sent["ana@example.com"]["List-Unsubscribe"]))
    app = create_app(config)
    try:
        response = app.test_client().post(urlsplit(https_link).path, data={"List-Unsubscribe": "One-Click"})
    finally:
        app.extensions["mailer"].database.dispose()
    assert response.status_code == 200
    assert mailto_link.startswith(f"mailto:{config.unsubscribe.mailto}?subject=")

    # Bob's mail client uses the mailto: link instead; the MTA pipes that mail in
    _https, bob_mailto = re.findall(r"<([^>]+)>", str(sent["bob@example.com"]["List-Unsubscribe"]))
    to, _, query = bob_mailto.removeprefix("mailto:").partition("?")
    subject = unquote(query.removeprefix("subject="))
    bob_mail = f"From: bob@example.com\nTo: {to}\nSubject: {subject}\nMessage-ID: <b1@example.com>\n\n\n"
    # Cid's mailbox is gone: the receiving server bounces to the VERP return path of her message
    [cid_envelope] = [m.mail_from for m in smtp_server.messages if m.rcpt_tos == ["cid@example.com"]]
    bounce = (FIXTURES / "postfix_hard_bounce.eml").read_text()
    bounce = bounce.replace("{{VERP}}", cid_envelope).replace("{{RCPT}}", "cid@example.com")
    bounce = bounce.replace("{{TOKEN}}", "x")
    maildir = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    (maildir / "new" / "1.bob").write_text(bob_mail)
    (maildir / "new" / "2.cid").write_text(bounce)
    report = process_inbound(database, config, maildir)
    assert [item.kind for item in report.items] == [InboundKind.UNSUBSCRIBE, InboundKind.HARD_BOUNCE]

    # the next campaign reaches only Dee
    smtp_server.messages.clear()
    second = cli("campaign", "create", "--list", "news", "--subject", "Winter news", "--template", "welcome")
    cli("campaign", "send", second.output.strip().splitlines()[-1])
    assert set(recipients_of(smtp_server)) == {"dee@example.com"}
    suppressed = cli("suppress", "ls").output
    assert "ana@example.com" in suppressed and "bob@example.com" in suppressed
    assert "cid@example.com" in suppressed and "hard_bounce" in suppressed
