"""Legal notices end to end: the gate, and delivery through the real engine to a real SMTP server."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import json
import re
from pathlib import Path

import pytest
import sqlalchemy as sa
from cli_helpers import Cli, write_config
from smtp_faults import FaultyServer

from mailer.config import load_config
from mailer.db import Database
from mailer.models import Campaign, Subscriber, SuppressionReason, utcnow
from mailer.recipients.optout import OptOutSource, unsubscribe
from mailer.recipients.suppression import suppress_address
from mailer.resources import resource_path
from mailer.tokens import UnsubscribeClaim
from mailer.web.app import create_app

REASON = "we must tell you about a security incident that affected your data"
NOTICE_HTML = """<p>Dear {{ subscriber.name or "subscriber" }},</p>
<p>On 20 November someone copied our mailing database. It held your address, {{ subscriber.email }},
and your name. No passwords or payment data were involved.</p>
<p>Questions? Reply to this message, or write to {{ company.postal_address }}.</p>
"""
NOTICE_TEXT = """Dear {{ subscriber.name or "subscriber" }},

On 20 November someone copied our mailing database. It held your address, {{ subscriber.email }},
and your name. No passwords or payment data were involved.

Questions? Reply to this message, or write to {{ company.postal_address }}.
"""


@pytest.fixture
def smtp_cli(tmp_path: Path, database: Database, smtp_server: FaultyServer) -> Cli:
    return Cli(write_config(tmp_path / "mailer.toml", database.url, smtp_server))


def _template(tmp_path: Path, html: str = NOTICE_HTML, text: str | None = NOTICE_TEXT,
              name: str = "incident") -> Path:
    path = tmp_path / f"{name}.html.j2"
    path.write_text(html, encoding="utf-8")
    if text is not None:
        (tmp_path / f"{name}.txt.j2").write_text(text, encoding="utf-8")
    return path


def _create(cli: Cli, template: Path | str, reason: str = REASON, ok: bool = True) -> str:
    result = cli("notice", "create", "--subject", "A security incident affecting your data",
                 "--template", str(template), "--reason", reason, ok=ok)
    return result.stdout.split()[2] if ok else result.stderr


def _people(cli: Cli, database: Database) -> None:
    """ana unsubscribed, bo is subscribed, cy is erased, dan hard-bounced."""
    cli("list", "create", "news")
    for person in ("ana", "bo", "cy", "dan"):
        cli("subscriber", "add", f"{person}@example.com", "--list", "news", "--name", person.title())
    config = load_config(cli.config_path, environ={})
    with database.session() as session:
        ana_id = session.scalar(sa.select(Subscriber.id).where(Subscriber.email == "ana@example.com"))
        assert ana_id is not None
        # the recipient's own click, as the web app records it
        unsubscribe(session, config, UnsubscribeClaim(ana_id, None, None), OptOutSource.ONE_CLICK)
        suppress_address(session, "dan@example.com", SuppressionReason.HARD_BOUNCE, source="smtp 550")
    cli("subscriber", "forget", "cy@example.com", "--yes")


def _recipients(smtp_server: FaultyServer) -> list[str]:
    return sorted(r for m in smtp_server.messages for r in m.rcpt_tos)


def test_a_notice_reaches_an_unsubscribed_address_and_a_campaign_does_not(
    smtp_cli: Cli, database: Database, smtp_server: FaultyServer, tmp_path: Path
) -> None:
    _people(smtp_cli, database)
    campaign_id = smtp_cli("campaign", "create", "--list", "news", "--subject", "Summer concerts",
                           "--template", "announcement").stdout.strip()

    smtp_cli("campaign", "send", campaign_id)
    assert _recipients(smtp_server) == ["bo@example.com"]
    smtp_server.messages.clear()

    notice_id = _create(smtp_cli, _template(tmp_path))
    out = smtp_cli("notice", "send", notice_id).stdout

    assert "2 sent" in out
    # the unsubscribed address is told; the erased and the hard-bounced ones are not
    assert _recipients(smtp_server) == ["ana@example.com", "bo@example.com"]
    for received in smtp_server.messages:
        message = email.message_from_bytes(received.data, policy=email.policy.default)
        assert message["Subject"] == "A security incident affecting your data"
        assert message["From"] == "Harmony Mails <news@harmonymails.com>"
        assert message["List-Unsubscribe"] is None
        text = message.get_body(("plain",))
        html = message.get_body(("html",))
        assert text is not None and html is not None
        for part in (text.get_content(), html.get_content()):
            assert "Advertisement" not in part
            assert "1968 S Coast HWY #2045" in part
            assert "security incident that affected your data" in part  # the reason, in the footer
        assert received.rcpt_tos[0] in text.get_content()
    status = json.loads(smtp_cli("notice", "ls", "--json").stdout)
    assert [(n["id"], n["status"], n["reason"]) for n in status] == [(int(notice_id), "sent", REASON)]


def test_each_notice_send_is_audit_logged_with_its_reason(
    smtp_cli: Cli, database: Database, smtp_server: FaultyServer, tmp_path: Path
) -> None:
    smtp_cli("list", "create", "news")
    smtp_cli("subscriber", "add", "ana@example.com", "--list", "news")
    notice_id = _create(smtp_cli, _template(tmp_path))

    smtp_cli("notice", "send", notice_id)
    smtp_cli("notice", "send", notice_id, ok=False)  # already sent: refused, not re-sent

    events = json.loads(smtp_cli("audit", "ls", "--action", "notice", "--json").stdout)
    assert len(events) == 1
    assert events[0]["reason"] == REASON
    assert events[0]["detail"]["recipients"] == 1
    assert events[0]["actor"].startswith("cli")
    assert len(smtp_server.messages) == 1


def test_an_unconfirmed_subscriber_gets_no_campaign(
    smtp_cli: Cli, smtp_server: FaultyServer
) -> None:
    smtp_cli("list", "create", "club", "--double-opt-in")
    smtp_cli("subscriber", "add", "eve@example.com", "--list", "club")
    smtp_cli("subscriber", "add", "bo@example.com", "--list", "club")
    confirmation = email.message_from_bytes(smtp_server.messages[1].data, policy=email.policy.default)
    text = confirmation.get_body(("plain",))
    assert text is not None
    bo_link = re.search(r"/confirm/\S+", text.get_content())
    assert bo_link is not None and smtp_server.messages[1].rcpt_tos == ["bo@example.com"]
    app = create_app(load_config(smtp_cli.config_path, environ={}), {"TESTING": True})
    assert app.test_client().post(bo_link.group(0)).status_code == 200
    app.extensions["mailer"].database.dispose()
    smtp_server.messages.clear()  # the two confirmation messages
    first = smtp_cli("campaign", "create", "--list", "club", "--subject", "Club news",
                     "--template", "announcement").stdout.strip()

    result = smtp_cli("campaign", "send", first)

    # bo confirmed and gets it; eve never followed her link and gets nothing
    assert _recipients(smtp_server) == ["bo@example.com"]
    assert "1 sent" in result.stdout


def test_a_notice_needs_a_reason(smtp_cli: Cli, tmp_path: Path) -> None:
    stderr = _create(smtp_cli, _template(tmp_path), reason="  ", ok=False)
    assert stderr.strip().splitlines() == [
        'Error: a notice needs --reason, e.g. --reason "we must tell you about a security incident '
        'that affected your data"'
    ]
    assert json.loads(smtp_cli("notice", "ls", "--json").stdout) == []


def test_a_campaign_template_is_refused(smtp_cli: Cli, tmp_path: Path) -> None:
    by_name = _create(smtp_cli, "welcome", ok=False)
    by_path = _create(smtp_cli, resource_path("templates") / "campaigns" / "announcement.html.j2", ok=False)
    assert "campaign template" in by_name and "campaign template" in by_path
    assert json.loads(smtp_cli("notice", "ls", "--json").stdout) == []

    # a copy of a campaign template elsewhere is created, but the gate will not send it
    copy = tmp_path / "copy.html.j2"
    copy.write_text((resource_path("templates") / "campaigns" / "announcement.html.j2").read_text("utf-8"))
    notice_id = _create(smtp_cli, copy)
    check = smtp_cli("notice", "check", notice_id, ok=False)
    assert check.exit_code == 1
    assert "built from a campaign template" in check.stderr


def test_the_gate_refuses_an_ad_label_a_sales_pitch_and_unfilled_example_text(
    smtp_cli: Cli, tmp_path: Path
) -> None:
    labelled = _create(smtp_cli, _template(tmp_path, NOTICE_HTML + "<p>Advertisement</p>", None, "labelled"))
    pitch = _create(smtp_cli, _template(tmp_path, NOTICE_HTML + "<p>Sorry! Take 20% off your next order.</p>",
                                        None, "pitch"))
    example = _create(smtp_cli, "breach")  # the shipped example, not yet filled in

    labelled_check = smtp_cli("notice", "check", labelled, ok=False).stderr
    pitch_check = smtp_cli("notice", "check", pitch, ok=False).stderr
    example_check = smtp_cli("notice", "check", example, ok=False).stderr
    send = smtp_cli("notice", "send", example, ok=False)

    assert "must not carry the advertisement label 'Advertisement'" in labelled_check
    assert "must not promote anything; it says '20% off'" in pitch_check
    assert "unfilled [EDIT: ...] marker" in example_check
    assert send.exit_code == 1 and "[EDIT" in send.stderr
    # the campaign commands run the same gate: a notice cannot slip out through them
    via_campaign = smtp_cli("campaign", "send", pitch, ok=False)
    assert via_campaign.exit_code == 1 and "must not promote anything" in via_campaign.stderr
    good = _create(smtp_cli, _template(tmp_path))
    assert smtp_cli("notice", "check", good).stdout.strip() == f"notice {good} may be sent"


def test_the_example_breach_notice_passes_once_filled_in(smtp_cli: Cli, tmp_path: Path) -> None:
    out = smtp_cli("notice", "example", "breach", "--dir", str(tmp_path / "mine")).stdout
    assert "wrote" in out and "[EDIT: ...]" in out
    again = smtp_cli("notice", "example", "breach", "--dir", str(tmp_path / "mine"), ok=False)
    assert again.exit_code == 1 and "not overwritten" in again.stderr
    unfilled = _create(smtp_cli, tmp_path / "mine" / "breach.html.j2")
    assert "[EDIT" in smtp_cli("notice", "check", unfilled, ok=False).stderr
    for suffix in (".html.j2", ".txt.j2"):
        path = tmp_path / "mine" / f"breach{suffix}"
        path.write_text(path.read_text("utf-8").replace("[EDIT:", "(").replace("]", ")"), encoding="utf-8")

    notice_id = _create(smtp_cli, tmp_path / "mine" / "breach.html.j2")

    assert smtp_cli("notice", "check", notice_id).stdout.strip() == f"notice {notice_id} may be sent"


def test_a_campaign_id_is_not_a_notice(smtp_cli: Cli) -> None:
    smtp_cli("list", "create", "news")
    campaign_id = smtp_cli("campaign", "create", "--list", "news", "--subject", "Summer concerts",
                           "--template", "announcement").stdout.strip()
    result = smtp_cli("notice", "send", campaign_id, ok=False)
    assert result.exit_code == 1
    assert f"no notice with id {campaign_id}" in result.stderr


def test_every_notice_command_has_help_with_an_example(smtp_cli: Cli) -> None:
    for command in ("example", "create", "check", "send", "ls"):
        assert "Example:" in smtp_cli("notice", command, "--help").stdout


def test_a_notice_started_by_the_campaign_commands_or_send_due_is_audit_logged(
    smtp_cli: Cli, database: Database, smtp_server: FaultyServer, tmp_path: Path
) -> None:
    smtp_cli("list", "create", "news")
    smtp_cli("subscriber", "add", "ana@example.com", "--list", "news")
    by_campaign_send = _create(smtp_cli, _template(tmp_path))
    by_send_due = _create(smtp_cli, _template(tmp_path))

    smtp_cli("campaign", "send", by_campaign_send)
    smtp_cli("campaign", "schedule", by_send_due, "--at", "2099-01-01T09:00:00+00:00")
    with database.session() as session:  # its time has come
        notice = session.get(Campaign, int(by_send_due))
        assert notice is not None
        notice.scheduled_at = utcnow() - dt.timedelta(seconds=1)
    smtp_cli("send-due")
    smtp_cli("send-due")  # nothing left to start: nothing more recorded

    events = json.loads(smtp_cli("audit", "ls", "--action", "notice", "--json").stdout)
    assert [(e["detail"]["notice_id"], e["reason"], e["detail"]["recipients"]) for e in events] == [
        (int(by_campaign_send), REASON, 1), (int(by_send_due), REASON, 1)]
    assert all(e["actor"].startswith("cli") for e in events)
    assert _recipients(smtp_server) == ["ana@example.com", "ana@example.com"]
