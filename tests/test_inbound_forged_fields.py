"""`mailer inbound process` acts only on what a message verifiably says: the From addr-spec, a
top-level report, the recipient block about the delivery's own address, 8-bit text read as text."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cli_helpers import Cli, write_config
from recipient_helpers import snapshot, statuses, suppressions
from test_inbound import World, delivery_row, make_campaign, make_delivery

from mailer.config import Config
from mailer.db import Database, address_hash
from mailer.models import (
    BounceEvent,
    Campaign,
    Delivery,
    DeliveryState,
    SubscriptionStatus,
    SuppressionReason,
)
from mailer.verp import make_return_path


@pytest.fixture
def world(database: Database, config: Config) -> World:
    return World(database, config)


def process(cli: Cli, tmp_path: Path, raw: bytes, ok: bool = True) -> dict[str, Any]:
    """Run `mailer inbound process FILE --json` on one message; what became of it."""
    path = tmp_path / f"message-{time.monotonic_ns()}.eml"
    path.write_bytes(raw)
    result = cli("inbound", "process", str(path), "--json", ok=ok)
    [item] = json.loads(result.stdout)["messages"]
    return dict(item)


def trusting_cli(world: World, tmp_path: Path, sender: str) -> Cli:
    extra = f'[inbound]\nfeedback_loop_senders = ["{sender}"]\n'
    return Cli(write_config(tmp_path / "trusting.toml", world.database.url, extra=extra))


# --- F2: the From address is the addr-spec of exactly one mailbox --------------------------------

def mailto_from(sender: str) -> bytes:
    return (f"From: {sender}\nTo: unsubscribe@harmonymails.com\nSubject: unsubscribe\n"
            "Message-ID: <u1@evil.example>\n\nplease\n").encode()


@pytest.mark.parametrize("sender", [
    "=?utf-8?b?YW5hQGV4YW1wbGUubmV0?= <attacker@evil.example>",  # base64 of ana@example.net
    "=?utf-8?q?ana=40example=2Enet?= <attacker@evil.example>",
    "ana@example.net <attacker@evil.example>",
    "ana@example.net (Ana) <attacker@evil.example>",
    "group: ana@example.net;, attacker@evil.example",
    "<ana@example.net>@evil.example",
    "ana@example.net, attacker@evil.example",
], ids=["b-encoded name", "q-encoded name", "bare address as name", "address and comment as name",
        "group", "route-like", "two mailboxes"])
def test_a_mailto_unsubscribe_never_acts_on_an_address_outside_the_angle_brackets(
    world: World, cli: Cli, tmp_path: Path, sender: str
) -> None:
    before = snapshot(world.database)
    item = process(cli, tmp_path, mailto_from(sender))
    assert item["kind"] == "unmatched", item
    assert snapshot(world.database) == before
    # the listing shows the address the message was judged by, or the header as it came: never Ana's
    assert item["from"] in ("attacker@evil.example", " ".join(sender.split())), item
    assert set(statuses(world.database, world.ana).values()) == {SubscriptionStatus.ACTIVE}


@pytest.mark.parametrize("sender", [
    "=?utf-8?q?bob=40example=2Eorg?= <ana@example.net>",
    '"bob@example.org" <ana@example.net>',
    "Ana <ana@example.net>",
    "Ana Example\n <ana@example.net>",
    "ana@example.net",
])
def test_a_mailto_unsubscribe_acts_on_the_addr_spec_whatever_the_name_says(
    world: World, cli: Cli, tmp_path: Path, sender: str
) -> None:
    item = process(cli, tmp_path, mailto_from(sender))
    assert item["kind"] == "unsubscribe" and "by sender address" in item["note"], item
    assert set(statuses(world.database, world.ana).values()) == {SubscriptionStatus.UNSUBSCRIBED}
    assert statuses(world.database, world.bob) == {"news": SubscriptionStatus.ACTIVE}


def complaint_from(sender: str, rcpt: str = "ana@example.net") -> bytes:
    return f"""\
From: {sender}
To: fbl@harmonymails.com
Subject: Abuse report
Message-ID: <report-1@evil.example>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="b"

--b
Content-Type: text/plain

This is an email abuse report.
--b
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: fake/1.0
Version: 1
Original-Rcpt-To: <{rcpt}>
--b--
""".encode()


@pytest.mark.parametrize("sender", [
    "=?utf-8?b?ZmJsQGZibC5leGFtcGxlLm5ldA==?= <attacker@evil.example>",  # base64 of fbl@fbl.example.net
    "fbl@fbl.example.net <attacker@evil.example>",
    "<fbl@fbl.example.net>@evil.example",
])
def test_a_complaint_is_not_from_a_feedback_loop_because_its_display_name_says_so(
    world: World, tmp_path: Path, sender: str
) -> None:
    cli = trusting_cli(world, tmp_path, "fbl.example.net")
    item = process(cli, tmp_path, complaint_from(sender))
    assert item["kind"] == "unverified_complaint", item
    assert suppressions(world.database) == []
    # the same report from the feedback loop's own address is believed
    item = process(cli, tmp_path, complaint_from("Feedback Loop <fbl@fbl.example.net>")
                   .replace(b"report-1", b"report-2"))
    assert item["kind"] == "complaint", item
    assert [s.address_hash for s in suppressions(world.database)] == [address_hash("ana@example.net")]


# --- F9: only a top-level report is a report ------------------------------------------------------

WRAPPED_REPORT = """\
Authentication-Results: mx.harmonymails.com; dmarc=pass (p=reject) header.from=fbl.example.net
From: Mail Delivery System <MAILER-DAEMON@fbl.example.net>
To: abuse@harmonymails.com
Subject: Undelivered Mail Returned to Sender
Message-ID: <bounce-of-fake-arf@fbl.example.net>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="O"

--O
Content-Type: text/plain

I'm sorry to have to inform you that your message could not be delivered.
--O
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.fbl.example.net

Final-Recipient: rfc822; nobody-here@fbl.example.net
Action: failed
Status: 5.1.1
Diagnostic-Code: smtp; 550 5.1.1 user unknown

--O
Content-Type: message/rfc822

From: attacker@evil.example
To: nobody-here@fbl.example.net
Subject: fake report
Message-ID: <inner@evil.example>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="I"

--I
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: fake
Version: 1
Original-Rcpt-To: ana@example.net

--I--
--O--
"""


def test_a_report_attached_inside_a_bounce_from_a_feedback_loop_suppresses_nobody(
    world: World, tmp_path: Path
) -> None:
    cli = trusting_cli(world, tmp_path, "fbl.example.net")
    before = snapshot(world.database)
    item = process(cli, tmp_path, WRAPPED_REPORT.encode())
    # a DSN stays a DSN: about nobody we mailed
    assert item["kind"] == "unmatched", item
    assert snapshot(world.database) == before
    assert suppressions(world.database) == []


# --- F14: a bounce counts only for the delivery's own address -----------------------------------

def dsn(verp: str, *blocks: tuple[str, str, str], message_id: str = "dsn") -> bytes:
    """A delivery-status report sent to `verp`; each block is (recipient, status, diagnostic)."""
    text = "\n".join(f"Action: failed\nFinal-Recipient: rfc822;{rcpt}\nStatus: {status}\nDiagnostic-Code: smtp; {diag}\n"
                     for rcpt, status, diag in blocks)
    return f"""\
Return-Path: <>
Delivered-To: {verp}
From: Mail Delivery System <Mailer-Daemon@mx.exim.example>
To: {verp}
Subject: Mail delivery failed: returning message to sender
Message-ID: <{message_id}@exim.example>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B"

--B
Content-Type: text/plain

This message was created automatically by mail delivery software.

--B
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.exim.example

{text}
--B--
""".encode()


def test_a_subscriber_cannot_charge_soft_bounces_to_someone_else(world: World, cli: Cli, tmp_path: Path) -> None:
    # Ana received three campaigns, Bob the third too; Ana forges reports for her own copies naming Bob
    with world.database.session() as session:
        first = session.get(Campaign, world.campaign_id)
        assert first is not None
        list_id = first.list_id
    second, third = make_campaign(world.database, list_id), make_campaign(world.database, list_id)
    ana_second = make_delivery(world.database, second, world.ana)
    bob_third = make_delivery(world.database, third, world.bob)
    for number, delivery in enumerate((world.delivery_id, ana_second)):
        raw = dsn(make_return_path(world.config, delivery), ("bob@example.org", "5.3.0", "550 5.3.0 too big"),
                  message_id=f"forged-{number}")
        item = process(cli, tmp_path, raw)
        assert item["kind"] == "unmatched" and "not the address it was sent to" in item["note"], item
        assert delivery_row(world.database, delivery).state is DeliveryState.SENT
    # one genuine mailbox-full report for Bob is one, not three
    genuine = dsn(make_return_path(world.config, bob_third), ("bob@example.org", "5.2.2", "552 5.2.2 mailbox full"),
                  message_id="genuine")
    item = process(cli, tmp_path, genuine)
    assert item["kind"] == "soft_bounce" and "bob@example.org: 1 of 3" in item["note"], item
    assert suppressions(world.database) == []
    with world.database.session() as session:
        events = session.scalars(sa.select(BounceEvent)).all()
        assert [(e.delivery_id, e.address_hash) for e in events] == [(bob_third, address_hash("bob@example.org"))]


# --- F15: the block about the delivery's address decides ----------------------------------------

def test_a_mailbox_gone_block_about_another_recipient_does_not_suppress_the_subscriber(
    world: World, cli: Cli, tmp_path: Path
) -> None:
    raw = dsn(make_return_path(world.config, world.delivery_id),
              ("ana@example.net", "5.7.1", "550 5.7.1 client host [203.0.113.9] blocked using zen.spamhaus.org"),
              ("old-forward-target@elsewhere.example", "5.1.1", "550 5.1.1 user unknown"))
    item = process(cli, tmp_path, raw)
    assert item["kind"] == "policy_block" and "ana@example.net not suppressed" in item["note"], item
    assert suppressions(world.database) == []
    assert delivery_row(world.database, world.delivery_id).state is DeliveryState.FAILED


def test_the_subscribers_own_mailbox_gone_block_suppresses_whatever_the_others_say(
    world: World, cli: Cli, tmp_path: Path
) -> None:
    raw = dsn(make_return_path(world.config, world.delivery_id),
              ("someone@elsewhere.example", "4.2.2", "452 4.2.2 mailbox full"),
              ("ANA@example.net", "5.1.1", "550 5.1.1 user unknown"))
    item = process(cli, tmp_path, raw)
    assert item["kind"] == "hard_bounce" and "(5.1.1)" in item["note"], item
    assert [(s.address_hash, s.reason) for s in suppressions(world.database)] == [
        (address_hash("ana@example.net"), SuppressionReason.HARD_BOUNCE)]


# --- F10: 8-bit diagnostics are read as text ----------------------------------------------------

@pytest.mark.parametrize("encoding", ["utf-8", "latin-1"])
def test_an_8bit_diagnostic_is_classified_stored_readably_and_erased(
    world: World, cli: Cli, tmp_path: Path, encoding: str
) -> None:
    raw = dsn(make_return_path(world.config, world.delivery_id),
              ("ana@example.net", "5.0.0", "550 5.1.1 <ana@example.net>: user unknown / EmpfXnger unbekannt"))
    raw = raw.replace(b"EmpfX", "Empfä".encode(encoding))
    item = process(cli, tmp_path, raw)
    assert item["kind"] == "hard_bounce" and "ana@example.net suppressed" in item["note"], item
    with world.database.session() as session:
        [event] = session.scalars(sa.select(BounceEvent)).all()
        assert event.diagnostic == "smtp; 550 5.1.1 <ana@example.net>: user unknown / Empfänger unbekannt"
    cli("subscriber", "forget", "ana@example.net", "--yes")
    with world.database.session() as session:
        stored = [*session.scalars(sa.select(BounceEvent.diagnostic)),
                  *session.scalars(sa.select(Delivery.last_response))]
    assert stored and not [text for text in stored if "ana@example.net" in text], stored


# --- F13: bare CR line endings are counted like any other -----------------------------------------

def test_deep_nesting_with_bare_cr_line_endings_is_refused_before_parsing(
    world: World, cli: Cli, tmp_path: Path
) -> None:
    inner = b"From: someone@example.com\rSubject: innermost\r\rhello\r"
    for _level in range(3000):
        inner = b"Content-Type: message/rfc822\r\r" + inner
    raw = b"From: attacker@example.com\rSubject: deep\rMessage-ID: <deep@attacker.example>\r" + inner
    started = time.process_time()
    item = process(cli, tmp_path, raw, ok=False)
    assert item["kind"] == "failed"
    assert "nested messages or multiparts" in item["note"] and "RecursionError" not in item["note"], item
    assert time.process_time() - started < 1.0
