"""`mailer inbound process`: bounces, complaints, mailto unsubscribes and auto-replies as providers send them."""

from __future__ import annotations

import json
import mailbox
from dataclasses import replace
from pathlib import Path

import pytest
import sqlalchemy as sa
from cli_helpers import Cli, write_config
from inbound_helpers import (
    FIXTURES,
    World,
    delivery_row,
    make_campaign,
    make_delivery,
    process_bytes,
    render,
)
from recipient_helpers import (
    Person,
    audit_events,
    snapshot,
    statuses,
    suppressions,
)

from mailer.config import InboundConfig, UnsubscribeScope
from mailer.db import Database, address_hash
from mailer.errors import InvalidInputError
from mailer.inbound.process import InboundKind, process_inbound
from mailer.inbound.sources import read_sources
from mailer.models import (
    BounceEvent,
    DeliveryState,
    SubscriptionStatus,
    SuppressionReason,
)
from mailer.verp import make_return_path

HARD_BOUNCES = ["gmail_hard_bounce", "yahoo_hard_bounce", "outlook_hard_bounce", "postfix_hard_bounce",
                "exim_hard_bounce", "exim_classic_bounce"]
# the first two carry our return path and our token; the third only names the address, so it
# counts only from a configured feedback loop
COMPLAINTS = ["yahoo_complaint", "outlook_complaint", "isp_complaint_by_address"]
MAILTO = ["mailto_subject_token", "mailto_plus_tag", "mailto_from_only"]
AUTO_REPLIES = ["vacation_gmail", "vacation_exchange_to_unsubscribe", "vacation_legacy"]
OTHERS = ["junk", "question", "relayed_dsn"]


@pytest.mark.parametrize("name", HARD_BOUNCES)
def test_a_permanent_bounce_fails_the_delivery_and_suppresses_the_address(world: World, name: str) -> None:
    [item] = world.process(name).items
    assert item.kind is InboundKind.HARD_BOUNCE, item.note
    delivery = delivery_row(world.database, world.delivery_id)
    assert delivery.state is DeliveryState.FAILED
    assert "bounced" in delivery.last_response
    [entry] = suppressions(world.database)
    assert entry.address_hash == address_hash("ana@example.net")
    assert entry.reason is SuppressionReason.HARD_BOUNCE
    # the other recipient of the same campaign is untouched
    assert delivery_row(world.database, world.bob_delivery).state is DeliveryState.SENT


def test_the_bounce_records_the_servers_reply(world: World) -> None:
    world.process("postfix_hard_bounce")
    delivery = delivery_row(world.database, world.delivery_id)
    assert delivery.last_code == 550
    assert "5.1.1" in delivery.last_response and "User unknown" in delivery.last_response
    with world.database.session() as session:
        [event] = session.scalars(sa.select(BounceEvent)).all()
        assert (event.status, event.delivery_id, event.campaign_id) == ("5.1.1", world.delivery_id,
                                                                        world.campaign_id)


def test_a_bounce_without_our_verp_address_is_matched_by_the_returned_token(world: World) -> None:
    raw = world.fixture("postfix_hard_bounce", verp="bounces@harmonymails.com")
    [item] = process_bytes(world.database, world.config, raw).items
    assert item.kind is InboundKind.HARD_BOUNCE
    assert delivery_row(world.database, world.delivery_id).state is DeliveryState.FAILED


def test_a_bounce_with_a_forged_verp_address_changes_nothing(world: World) -> None:
    forged = make_return_path(world.config, world.delivery_id).replace("b-", "b-9", 1)
    text = (FIXTURES / "exim_classic_bounce.eml").read_text().replace("{{VERP}}", forged)
    text = text.replace("{{RCPT}}", "ana@example.net")
    before = snapshot(world.database)
    [item] = process_bytes(world.database, world.config, text.encode()).items
    assert item.kind is InboundKind.UNMATCHED
    assert snapshot(world.database) == before
    assert delivery_row(world.database, world.delivery_id).state is DeliveryState.SENT


def test_a_transient_bounce_only_counts(world: World) -> None:
    [item] = world.process("postfix_expired_4xx").items
    assert item.kind is InboundKind.SOFT_BOUNCE, item.note
    assert "1 of 3" in item.note
    assert suppressions(world.database) == []
    assert delivery_row(world.database, world.delivery_id).state is DeliveryState.SENT


def test_delay_warnings_from_many_campaigns_never_suppress(world: World) -> None:
    # the server still holds the message; Gmail warns so whenever a big send outpaces it
    world.process("postfix_delayed")
    for number in (2, 3, 4):
        campaign = make_campaign(world.database, world.ana.list_ids["news"], f"Issue {number}")
        delivery = make_delivery(world.database, campaign, world.ana)
        raw = world.fixture("postfix_delayed", delivery_id=delivery, campaign_id=campaign)
        [item] = process_bytes(world.database, world.config,
                               raw.replace(b"Message-Id: <", f"Message-Id: <c{campaign}.".encode())).items
        assert item.kind is InboundKind.DELAYED and "not counted" in item.note, item.note
    assert suppressions(world.database) == []
    assert bounce_event_count(world.database) == 0
    # the same delivery given up on later is counted then
    [item] = world.process("postfix_expired_4xx").items
    assert "1 of 3" in item.note


@pytest.mark.parametrize("name", ["exim_retry_timeout", "exim_mailbox_full_expired", "yahoo_mailbox_full"])
def test_a_bounce_without_a_status_part_that_gave_up_on_4xx_replies_only_counts(world: World, name: str) -> None:
    # Exim and qmail call every bounce "permanent"; the reply inside says the mailbox may come back
    [item] = world.process(name).items
    assert item.kind is InboundKind.SOFT_BOUNCE, item.note
    assert "1 of 3" in item.note
    assert suppressions(world.database) == []
    assert delivery_row(world.database, world.delivery_id).state is DeliveryState.SENT


def test_soft_bounces_from_three_campaigns_suppress_but_one_campaign_twice_does_not(world: World) -> None:
    delayed_again = world.fixture("postfix_expired_4xx").replace(b"Message-Id: <", b"Message-Id: <again.")
    process_bytes(world.database, world.config, world.fixture("postfix_expired_4xx"))
    [again] = process_bytes(world.database, world.config, delayed_again).items
    assert "already counted" in again.note
    assert suppressions(world.database) == []
    for number in (2, 3):
        campaign = make_campaign(world.database, world.ana.list_ids["news"], f"Issue {number}")
        delivery = make_delivery(world.database, campaign, world.ana)
        raw = world.fixture("postfix_expired_4xx", delivery_id=delivery, campaign_id=campaign)
        raw = raw.replace(b"Message-Id: <", f"Message-Id: <c{campaign}.".encode())
        [item] = process_bytes(world.database, world.config, raw).items
        assert item.kind is InboundKind.SOFT_BOUNCE
    [entry] = suppressions(world.database)
    assert entry.reason is SuppressionReason.SOFT_BOUNCES
    assert entry.address_hash == address_hash("ana@example.net")


def test_the_soft_bounce_limit_is_configurable(world: World) -> None:
    world.config = replace(world.config, sending=replace(world.config.sending, soft_bounce_limit=1))
    [item] = world.process("postfix_expired_4xx").items
    assert item.note.endswith("suppressed")
    assert suppressions(world.database)[0].reason is SuppressionReason.SOFT_BOUNCES


@pytest.mark.parametrize(("name", "limit", "reason"), [
    ("postfix_hard_bounce", 3, "hard bounce: 5.1.1"),
    ("postfix_expired_4xx", 1, "1 campaigns soft-bounced, the last 4.4.1"),
    ("yahoo_complaint", 3, "spam complaint: "),
])
def test_every_suppression_inbound_makes_is_in_the_audit_trail_once(
    world: World, name: str, limit: int, reason: str
) -> None:
    world.config = replace(world.config, sending=replace(world.config.sending, soft_bounce_limit=limit))
    world.process(name)
    world.process(name)
    [event] = audit_events(world.database, "suppress")
    assert (event.actor, event.subject) == ("inbound", "ana@example.net")
    assert event.reason.startswith(reason)
    assert event.detail == {"delivery_id": world.delivery_id, "campaign_id": world.campaign_id}


@pytest.mark.parametrize("name", COMPLAINTS)
def test_a_spam_complaint_suppresses_the_recipient(world: World, name: str) -> None:
    if name == "isp_complaint_by_address":
        world.config = replace(world.config, inbound=InboundConfig(feedback_loop_senders=("isp.example.net",)))
    [item] = world.process(name).items
    assert item.kind is InboundKind.COMPLAINT, item.note
    [entry] = suppressions(world.database)
    assert entry.address_hash == address_hash("ana@example.net")
    assert entry.reason is SuppressionReason.COMPLAINT
    assert set(statuses(world.database, world.ana).values()) == {SubscriptionStatus.UNSUBSCRIBED}
    assert statuses(world.database, world.bob) == {"news": SubscriptionStatus.ACTIVE}


def test_a_complaint_that_is_not_abuse_is_left_alone(world: World) -> None:
    raw = world.fixture("isp_complaint_by_address").replace(b"Feedback-Type: abuse", b"Feedback-Type: not-spam")
    before = snapshot(world.database)
    [item] = process_bytes(world.database, world.config, raw).items
    assert item.kind is InboundKind.OTHER and "not-spam" in item.note
    assert snapshot(world.database) == before


@pytest.mark.parametrize("name", MAILTO)
def test_mail_to_the_unsubscribe_address_unsubscribes_like_the_web(world: World, name: str) -> None:
    [item] = world.process(name).items
    assert item.kind is InboundKind.UNSUBSCRIBE, item.note
    [entry] = suppressions(world.database)
    assert entry.address_hash == address_hash("ana@example.net")
    assert (entry.reason, entry.source) == (SuppressionReason.UNSUBSCRIBED, "mailto")
    assert set(statuses(world.database, world.ana).values()) == {SubscriptionStatus.UNSUBSCRIBED}
    [event] = audit_events(world.database)
    assert (event.actor, event.reason) == ("mailto", "mailto")


def test_mailto_with_list_scope_leaves_only_that_list(world: World) -> None:
    world.config = replace(world.config, unsubscribe=replace(world.config.unsubscribe,
                                                              scope=UnsubscribeScope.LIST))
    [item] = world.process("mailto_subject_token").items
    assert item.kind is InboundKind.UNSUBSCRIBE and "the list News" in item.note
    assert statuses(world.database, world.ana) == {"news": SubscriptionStatus.UNSUBSCRIBED,
                                                   "offers": SubscriptionStatus.ACTIVE}
    assert suppressions(world.database) == []


def test_mailto_from_a_stranger_changes_nothing(world: World) -> None:
    stranger = Person("stranger@example.com", 999, {"news": 1})
    raw = render("mailto_from_only", world.config, stranger, world.delivery_id, None)
    before = snapshot(world.database)
    [item] = process_bytes(world.database, world.config, raw).items
    assert item.kind is InboundKind.UNMATCHED
    assert snapshot(world.database) == before


@pytest.mark.parametrize("name", AUTO_REPLIES)
def test_auto_replies_are_ignored_even_with_a_token_in_the_subject(world: World, name: str) -> None:
    before = snapshot(world.database)
    [item] = world.process(name).items
    assert item.kind is InboundKind.AUTO_REPLY, item.note
    assert snapshot(world.database) == before
    assert delivery_row(world.database, world.delivery_id).state is DeliveryState.SENT


@pytest.mark.parametrize(("subject", "marker"), [
    ("Automatische Antwort: Unser Herbstkatalog", ""),  # German Outlook, from a server adding no header
    ("Automatisch antwoord: Onze herfstcollectie", ""),
    ("Autosvar: Vår höstkollektion", ""),
    ("Absent du bureau jusqu'au 2 décembre", "X-Auto-Response-Suppress: All\n"),  # Exchange's own mark
])
def test_localised_out_of_office_replies_to_the_unsubscribe_address_are_ignored(
    world: World, subject: str, marker: str
) -> None:
    raw = (f"From: Ana Lima <ana@example.net>\nTo: unsubscribe@harmonymails.com\nSubject: {subject}\n"
           f"Message-ID: <oof-1@example.net>\n{marker}Content-Type: text/plain; charset=utf-8\n\n"
           "Ich bin bis Montag nicht im Büro.\n").encode()
    before = snapshot(world.database)
    [item] = process_bytes(world.database, world.config, raw).items
    assert item.kind is InboundKind.AUTO_REPLY, item.note
    assert snapshot(world.database) == before


@pytest.mark.parametrize("name", OTHERS)
def test_anything_else_is_left_alone_and_listed(world: World, name: str) -> None:
    before = snapshot(world.database)
    report = world.process(name)
    assert [item.kind for item in report.items] == [InboundKind.OTHER]
    assert report.left_alone == report.items
    assert snapshot(world.database) == before


def write_maildir(path: Path, messages: list[bytes]) -> Path:
    box = mailbox.Maildir(path, create=True)
    for raw in messages:
        box.add(raw)
    box.close()
    return path


def bounce_event_count(database: Database) -> int:
    with database.session() as session:
        return session.scalar(sa.select(sa.func.count()).select_from(BounceEvent)) or 0


def test_processing_the_same_maildir_twice_changes_nothing_the_second_time(
    world: World, tmp_path: Path
) -> None:
    # Bob's copy of the campaign bounces and Ana complains and asks to leave, all in one mailbox
    messages = [world.fixture(name, person=world.bob, delivery_id=world.bob_delivery)
                for name in ("gmail_hard_bounce", "postfix_delayed")]
    messages += [world.fixture(name) for name in ("outlook_complaint", "mailto_subject_token", *AUTO_REPLIES,
                                                  *OTHERS)]
    maildir = write_maildir(tmp_path / "Maildir", messages)
    first = process_inbound(world.database, world.config, maildir)
    assert first.counts[InboundKind.HARD_BOUNCE] == 1
    assert first.counts[InboundKind.DELAYED] == 1
    assert first.counts[InboundKind.SOFT_BOUNCE] == 0
    assert first.counts[InboundKind.COMPLAINT] == 1
    assert first.counts[InboundKind.UNSUBSCRIBE] == 1
    assert first.counts[InboundKind.AUTO_REPLY] == 3
    assert first.counts[InboundKind.OTHER] == 3
    after_first = (snapshot(world.database), bounce_event_count(world.database),
                   sorted(s.reason for s in suppressions(world.database)))
    assert after_first[2] == [SuppressionReason.COMPLAINT, SuppressionReason.HARD_BOUNCE]

    # a run moves what it handled to cur/, marked seen; the same mail delivered again changes nothing
    assert not list((maildir / "new").iterdir())
    assert process_inbound(world.database, world.config, maildir).items == []
    for seen in (maildir / "cur").iterdir():
        seen.rename(maildir / "new" / seen.name.partition(":")[0])
    second = process_inbound(world.database, world.config, maildir)
    assert second.counts[InboundKind.ALREADY_PROCESSED] == 4
    assert second.counts[InboundKind.AUTO_REPLY] == 3 and second.counts[InboundKind.OTHER] == 3
    assert (snapshot(world.database), bounce_event_count(world.database),
            sorted(s.reason for s in suppressions(world.database))) == after_first


def test_an_mbox_is_read_message_by_message(world: World, tmp_path: Path) -> None:
    path = tmp_path / "bounces.mbox"
    box = mailbox.mbox(path, create=True)
    for name in ("postfix_hard_bounce", "vacation_legacy", "junk"):
        box.add(world.fixture(name))
    box.close()
    report = process_inbound(world.database, world.config, path)
    assert [item.kind for item in report.items] == [InboundKind.HARD_BOUNCE, InboundKind.AUTO_REPLY,
                                                    InboundKind.OTHER]


def test_a_directory_that_is_not_a_maildir_is_refused(world: World, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="not a Maildir"):
        process_inbound(world.database, world.config, tmp_path)
    with pytest.raises(InvalidInputError, match="cannot read"):
        process_inbound(world.database, world.config, tmp_path / "missing.eml")


def test_cli_reads_one_message_from_stdin_as_an_mta_pipe_does(world: World, cli: Cli) -> None:
    result = cli("inbound", "process", "-", input=world.fixture("mailto_plus_tag").decode())
    assert "unsubscribes: 1" in result.output
    assert suppressions(world.database)[0].source == "mailto"


def test_cli_prints_counts_per_class_and_lists_what_it_left_alone(
    world: World, cli: Cli, tmp_path: Path
) -> None:
    maildir = write_maildir(tmp_path / "Maildir", [world.fixture(n) for n in ("postfix_hard_bounce", "question")])
    output = cli("inbound", "process", str(maildir)).output
    assert "hard bounces: 1" in output
    assert "other: 1" in output
    assert "Question about the autumn collection" in output
    for seen in (maildir / "cur").iterdir():  # delivered again
        seen.rename(maildir / "new" / seen.name.partition(":")[0])
    data = json.loads(cli("inbound", "process", str(maildir), "--json").output)
    assert data["counts"]["already_processed"] == 1 and data["counts"]["other"] == 1
    assert [m["kind"] for m in data["messages"]] == ["already_processed", "other"]


def test_a_maildir_is_read_in_delivery_order_within_one_second(tmp_path: Path) -> None:
    # names carry the microsecond unpadded: 95000 came before 120000 though "M120000" sorts first
    (tmp_path / "cur").mkdir()
    (tmp_path / "tmp").mkdir()
    (tmp_path / "new").mkdir()
    for name, body in (("1764406800.M120000P7.host", b"second"), ("1764406800.M95000P7.host", b"first"),
                       ("1764406801.M5P7.host", b"third")):
        (tmp_path / "new" / name).write_bytes(b"Subject: x\n\n" + body + b"\n")
    assert [raw.data.split(b"\n\n")[1] for raw in read_sources(tmp_path)] == [b"first\n", b"second\n", b"third\n"]


def test_cli_reports_an_unreadable_source_in_one_line(world: World, cli: Cli, tmp_path: Path) -> None:
    result = cli("inbound", "process", str(tmp_path), ok=False)
    assert result.exit_code == 1
    assert "not a Maildir" in result.stderr and "Traceback" not in result.output


def test_a_late_bounce_of_a_corrected_address_does_not_suppress_the_new_one(world: World, cli: Cli) -> None:
    raw = world.fixture("postfix_hard_bounce")  # about ana@example.net, as sent
    cli("subscriber", "update", "ana@example.net", "--email", "ana@example.com")
    [item] = process_bytes(world.database, world.config, raw).items
    assert item.kind is InboundKind.HARD_BOUNCE and "no longer" in item.note
    assert delivery_row(world.database, world.delivery_id).state is DeliveryState.FAILED
    assert suppressions(world.database) == []
    with world.database.session() as session:
        [event] = session.scalars(sa.select(BounceEvent)).all()
        assert event.address_hash == address_hash("ana@example.net")


def test_cli_asks_the_mta_to_retry_when_the_database_is_down(tmp_path: Path) -> None:
    config_path = write_config(tmp_path / "mailer.toml", f"sqlite:///{tmp_path}/no/such/dir/mailer.db")
    result = Cli(config_path)("inbound", "process", "-", input="Subject: hi\n\nhello\n", ok=False)
    assert result.exit_code == 75  # EX_TEMPFAIL: the MTA keeps the message and tries again
    assert "try again later" in result.stderr


def test_cli_tempfail_when_postgresql_is_down_is_one_line(tmp_path: Path) -> None:
    # psycopg's "connection refused" runs over two lines; an MTA logs only the first
    config_path = write_config(tmp_path / "mailer.toml", "postgresql+psycopg://postgres@127.0.0.1:1/test")
    result = Cli(config_path)("inbound", "process", "-", input="Subject: hi\n\nhello\n", ok=False)
    assert result.exit_code == 75
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("Error: the database is unavailable, try again later:") and "refused" in line


@pytest.mark.parametrize(("raw", "kind"), [
    (b"", InboundKind.OTHER),
    (b"\x00\xff\xfe not a message", InboundKind.OTHER),
    (b"From: Mail\xe9r <MAILER-DAEMON@example.org>\nTo: \xff@x\nSubject: \xe9t\xe9\n\n550 5.1.1 <a@b.c> unknown\n",
     InboundKind.OTHER),
    (b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\n\n--x\n"
     b"Content-Type: message/delivery-status\n\nAction: failed\nFinal-Recipient: rfc822;\n\n--x--\n",
     InboundKind.OTHER),
    # a complaint it cannot tie to anyone is still listed as one, for a person to look at
    (b"Content-Type: multipart/report; report-type=feedback-report; boundary=x\n\n--x\n"
     b"Content-Type: message/feedback-report\n\nFeedback-Type: abuse\n--x--\n",
     InboundKind.UNVERIFIED_COMPLAINT),
    (b"From: MAILER-DAEMON@x\nContent-Type: text/plain; charset=no-such-charset\n\n\xff 550 user unknown\n",
     InboundKind.OTHER),
], ids=["empty", "binary", "8-bit headers", "empty recipient", "report about nobody", "unknown charset"])
def test_malformed_mail_is_left_alone_without_an_error(world: World, raw: bytes, kind: InboundKind) -> None:
    before = snapshot(world.database)
    [item] = process_bytes(world.database, world.config, raw).items
    assert item.kind is kind
    assert snapshot(world.database) == before
