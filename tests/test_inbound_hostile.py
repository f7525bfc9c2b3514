"""Hostile inbound mail: forged complaints suppress nobody, and no message stops the opt-outs behind it."""

from __future__ import annotations

import base64
import email
import mailbox
import quopri
import time
from dataclasses import replace
from pathlib import Path

import pytest
from cli_helpers import Cli, write_config
from hypothesis import given
from hypothesis import strategies as st
from inbound_helpers import World, process_bytes
from recipient_helpers import snapshot, statuses, suppressions

from mailer.config import InboundConfig, config_from_dict
from mailer.db import address_hash
from mailer.errors import ConfigError
from mailer.inbound.classify import sender_address
from mailer.inbound.process import InboundKind, process_inbound, process_message
from mailer.models import SubscriptionStatus, SuppressionReason
from mailer.verp import make_return_path


def trusting(world: World, *senders: str) -> None:
    world.config = replace(world.config, inbound=InboundConfig(feedback_loop_senders=senders))


# --- forged complaints ------------------------------------------------------------------------

FORGED_REPORT = """\
From: Concerned Citizen <abuse@attacker.example>
To: fbl@harmonymails.com
Subject: Abuse report
Message-ID: <forged-1@attacker.example>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="b"

--b
Content-Type: text/plain

This is an email abuse report.

--b
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: Totally-Real-FBL/1.0
Version: 1
{rcpt_to}
--b
Content-Type: text/rfc822-headers

From: Harmony Mails <news@harmonymails.com>
To: {to}
Subject: Our autumn collection is here

--b--
"""


def forged(rcpt_to: str = "", to: str = "bob@example.org, eve@example.com", sender: str = "") -> bytes:
    text = FORGED_REPORT.format(rcpt_to=f"Original-Rcpt-To: <{rcpt_to}>" if rcpt_to else "", to=to)
    if sender:
        text = text.replace("Concerned Citizen <abuse@attacker.example>", sender)
    return text.encode()


@pytest.mark.parametrize(("raw", "note"), [
    (forged(rcpt_to="ana@example.net"),
     "from abuse@attacker.example naming ana@example.net, bob@example.org, eve@example.com: "),
    (forged(to="bob@example.org, eve@example.com"),
     "from abuse@attacker.example naming bob@example.org, eve@example.com: "),
    (forged(rcpt_to="ana@example.net", sender="abuse@evil.isp.example.net"),
     "from abuse@evil.isp.example.net naming ana@example.net, bob@example.org, eve@example.com: "),
    (forged(rcpt_to="ana@example.net", sender="isp.example.net@attacker.example"),
     "from isp.example.net@attacker.example naming ana@example.net, bob@example.org, eve@example.com: "),
], ids=["Original-Rcpt-To", "To list", "subdomain of a trusted domain", "trusted domain as local part"])
def test_a_forged_complaint_suppresses_nobody_and_is_listed_with_the_address_it_named(
    world: World, raw: bytes, note: str
) -> None:
    trusting(world, "isp.example.net")
    before = snapshot(world.database)
    [item] = process_bytes(world.database, world.config, raw).items
    assert item.kind is InboundKind.UNVERIFIED_COMPLAINT
    # the operator sees who sent it and every address it named
    assert item.note.startswith(note), item.note
    assert snapshot(world.database) == before
    assert statuses(world.database, world.bob) == {"news": SubscriptionStatus.ACTIVE}


def test_a_forged_return_path_in_a_complaint_suppresses_nobody(world: World) -> None:
    # Yahoo's report names Ana only by our return path; this one's signature is not ours
    real = make_return_path(world.config, world.delivery_id)
    raw = world.fixture("yahoo_complaint", verp=real.replace("b-", "b-9", 1))
    assert real.encode() not in raw
    before = snapshot(world.database)
    [item] = process_bytes(world.database, world.config, raw).items
    assert item.kind is InboundKind.UNVERIFIED_COMPLAINT
    assert snapshot(world.database) == before


@pytest.mark.parametrize("trusted", ["abuse-reports@isp.example.net", "isp.example.net", "ISP.Example.NET"])
def test_a_configured_feedback_loop_may_name_the_address(world: World, trusted: str) -> None:
    trusting(world, trusted)
    [item] = world.process("isp_complaint_by_address").items
    assert item.kind is InboundKind.COMPLAINT
    assert "ana@example.net suppressed" in item.note and "abuse-reports@isp.example.net" in item.note
    [entry] = suppressions(world.database)
    assert entry.address_hash == address_hash("ana@example.net")
    assert entry.reason is SuppressionReason.COMPLAINT


def test_our_token_in_a_complaint_from_anyone_is_believed(world: World) -> None:
    # only the person it was sent to has it: they could as well have clicked it
    raw = world.fixture("outlook_complaint").replace(b"staff@hotmail.com", b"someone@attacker.example")
    [item] = process_bytes(world.database, world.config, raw).items
    assert item.kind is InboundKind.COMPLAINT and "identified by our unsubscribe token" in item.note
    assert [s.address_hash for s in suppressions(world.database)] == [address_hash("ana@example.net")]


def test_the_cli_lists_an_unverified_complaint_with_the_address_it_named(world: World, cli: Cli) -> None:
    result = cli("inbound", "process", "-", input=forged(rcpt_to="ana@example.net").decode())
    assert "unverified complaints: 1" in result.output
    [line] = [line for line in result.output.splitlines() if "<forged-1@attacker.example>" in line]
    assert "abuse@attacker.example" in line and "naming ana@example.net" in line
    assert suppressions(world.database) == []


OUR_MTA = "mx.harmonymails.com"


@pytest.mark.parametrize(("results", "believed"), [
    ([f"{OUR_MTA}; spf=pass smtp.mailfrom=isp.example.net; dmarc=pass (p=reject) header.from=isp.example.net"],
     True),
    ([], False),
    (["attacker.example; dmarc=pass header.from=isp.example.net"], False),
    ([f"{OUR_MTA}; dmarc=fail header.from=isp.example.net", f"{OUR_MTA}; dmarc=pass header.from=isp.example.net"],
     False),
    ([f"{OUR_MTA}; dmarc=pass header.from=attacker.example"], False),
    ([f"{OUR_MTA} (our (nested) comment); dmarc=none header.from=isp.example.net; dkim=pass"], False),
], ids=["our DMARC pass", "no results", "someone else's results", "a forged pass below our fail",
        "a pass for another domain", "no DMARC pass"])
def test_with_trusted_authserv_ids_a_feedback_loop_counts_only_with_our_mtas_dmarc_pass(
    world: World, results: list[str], believed: bool
) -> None:
    world.config = replace(world.config, inbound=InboundConfig(feedback_loop_senders=("isp.example.net",),
                                                               trusted_authserv_ids=(OUR_MTA,)))
    headers = "".join(f"Authentication-Results: {value}\n" for value in results).encode()
    [item] = process_bytes(world.database, world.config, headers + world.fixture("isp_complaint_by_address")).items
    assert item.kind is (InboundKind.COMPLAINT if believed else InboundKind.UNVERIFIED_COMPLAINT), item.note
    assert len(suppressions(world.database)) == (1 if believed else 0)


def test_a_bad_authserv_id_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError, match=r"inbound\.trusted_authserv_ids: .*'mx example'"):
        config_from_dict({"inbound": {"trusted_authserv_ids": ["mx example"]}})


@pytest.mark.parametrize("entry", ["not a domain", "@example.com", "fbl@", "localhost", "fbl@@x.example"])
def test_a_bad_feedback_loop_sender_is_refused_in_one_line(entry: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_dict({"inbound": {"feedback_loop_senders": [entry]}})
    message = str(caught.value)
    assert "inbound.feedback_loop_senders" in message and repr(entry) in message and "\n" not in message


# --- poison messages --------------------------------------------------------------------------


def nested(depth: int) -> bytes:
    inner = b"From: someone@example.com\nSubject: innermost\n\nhello\n"
    for _level in range(depth):
        inner = b"Content-Type: message/rfc822\n\n" + inner
    return b"From: attacker@example.com\nSubject: deep\n" + inner  # no Message-ID: named by file


def parens(count: int) -> bytes:
    return (b"From: " + b"(" * count + b"attacker@example.com\nSubject: parens\n"
            b"Message-ID: <parens@attacker.example>\n\nhello\n")


def encoded_subject(words: int) -> bytes:
    subject = b" ".join([b"=?utf-8?q?spam?="] * words)
    return b"From: attacker@example.com\nSubject: " + subject + b"\nMessage-ID: <subject@attacker.example>\n\nhi\n"


def body_of(size: int) -> bytes:
    return (b"From: MAILER-DAEMON@attacker.example\nX-Failed-Recipients: ana@example.net\n"
            b"Subject: big\nMessage-ID: <big@attacker.example>\n\n" + b"550 x\n" * (size // 6))


# each poison, and what the run makes of it: a failure it reports, or mail it reads safely and lists
POISONS = {
    "3000 nested messages": (lambda: nested(3000), InboundKind.FAILED),
    "600 ( in From": (lambda: parens(600), InboundKind.OTHER),
    "100,000 encoded words": (lambda: encoded_subject(100_000), InboundKind.FAILED),
    "11 MiB body": (lambda: body_of(11 * 1024 * 1024), InboundKind.FAILED),
    "9 MiB body": (lambda: body_of(9 * 1024 * 1024), InboundKind.UNMATCHED),  # a fake bounce
}
# CPU seconds one poison message may cost; the bound the code aims at is about one
POISON_CPU_SECONDS = 3.0


def genuine(world: World) -> tuple[bytes, bytes]:
    """Ana asks to leave by mail; Bob's copy of the campaign bounces."""
    return world.fixture("mailto_plus_tag"), world.fixture("postfix_hard_bounce", person=world.bob,
                                                           delivery_id=world.bob_delivery)


def assert_genuine_honoured(world: World) -> None:
    assert set(statuses(world.database, world.ana).values()) == {SubscriptionStatus.UNSUBSCRIBED}
    assert {s.address_hash: s.reason for s in suppressions(world.database)} == {
        address_hash("ana@example.net"): SuppressionReason.UNSUBSCRIBED,
        address_hash("bob@example.org"): SuppressionReason.HARD_BOUNCE,
    }


def maildir_of(path: Path, messages: list[bytes], folder: str = "new") -> Path:
    for sub in ("new", "cur", "tmp"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    for number, raw in enumerate(messages):
        (path / folder / f"{1764063600 + number}.M{number}P1.test.example").write_bytes(raw)
    return path


@pytest.mark.parametrize("poison", POISONS, ids=list(POISONS))
def test_a_poison_message_in_a_maildir_is_reported_and_the_mail_around_it_is_honoured(
    world: World, tmp_path: Path, poison: str
) -> None:
    make, expected = POISONS[poison]
    raw = make()
    mailto, bounce = genuine(world)
    maildir = maildir_of(tmp_path / "Maildir", [raw, mailto, raw, bounce, raw])
    started = time.process_time()
    report = process_inbound(world.database, world.config, maildir)
    spent = time.process_time() - started
    assert [item.kind for item in report.items] == [expected, InboundKind.UNSUBSCRIBE, expected,
                                                    InboundKind.HARD_BOUNCE, expected]
    assert_genuine_honoured(world)
    for item in report.items[::2]:
        assert item.name.startswith(("<", "17640636")), item  # its Message-ID, or else its file name
        assert item.note
    assert spent < 3 * POISON_CPU_SECONDS + 2, f"{spent:.1f} s of CPU"
    # handled for good, poison included: the next run reads none of it again
    assert sorted(p.name for p in (maildir / "new").iterdir()) == []
    assert all(p.name.endswith(":2,S") for p in (maildir / "cur").iterdir())
    assert process_inbound(world.database, world.config, maildir).items == []


@pytest.mark.parametrize("poison", POISONS, ids=list(POISONS))
def test_one_poison_message_costs_about_a_second_of_cpu_at_most(world: World, poison: str) -> None:
    make, expected = POISONS[poison]
    raw = make()
    started = time.process_time()
    item = process_message(world.database, world.config, raw, origin="poison")
    spent = time.process_time() - started
    assert item.kind is expected
    assert spent < POISON_CPU_SECONDS, f"{spent:.1f} s of CPU"


def test_a_failed_message_names_the_file_and_the_run_exits_65(world: World, cli: Cli, tmp_path: Path) -> None:
    mailto, bounce = genuine(world)
    maildir = maildir_of(tmp_path / "Maildir", [mailto, nested(3000), bounce])
    result = cli("inbound", "process", str(maildir), ok=False)
    assert result.exit_code == 65
    assert "unsubscribes: 1" in result.output and "hard bounces: 1" in result.output
    assert "failed: 1" in result.output
    [line] = [line for line in result.output.splitlines() if "1764063601.M1P1.test.example" in line]
    assert "nested" in line
    [error] = result.stderr.strip().splitlines()
    assert error == "Error: 1 of 3 messages could not be processed; the others were"
    assert_genuine_honoured(world)


@pytest.mark.parametrize("poison", ["3000 nested messages", "100,000 encoded words", "11 MiB body"])
def test_a_poison_message_piped_in_by_an_mta_exits_65_quickly(world: World, cli: Cli, poison: str) -> None:
    raw = POISONS[poison][0]()
    started = time.process_time()
    result = cli("inbound", "process", "-", input=raw.decode("ascii"), ok=False)
    assert time.process_time() - started < POISON_CPU_SECONDS
    assert result.exit_code == 65  # EX_DATAERR: not 75, which would make the MTA retry it for days
    assert "failed: 1" in result.output and "Traceback" not in result.output
    # and the pipe still works for the next message
    assert "unsubscribes: 1" in cli("inbound", "process", "-", input=genuine(world)[0].decode()).output


def test_poison_in_an_mbox_is_reported_and_the_mail_around_it_is_honoured(world: World, tmp_path: Path) -> None:
    mailto, bounce = genuine(world)
    path = tmp_path / "bounces.mbox"
    box = mailbox.mbox(path, create=True)
    for raw in (nested(3000), mailto, encoded_subject(100_000), parens(600), bounce, body_of(11 * 1024 * 1024)):
        box.add(raw)
    box.close()
    report = process_inbound(world.database, world.config, path)
    assert [item.kind for item in report.items] == [
        InboundKind.FAILED, InboundKind.UNSUBSCRIBE, InboundKind.FAILED, InboundKind.OTHER,
        InboundKind.HARD_BOUNCE, InboundKind.FAILED]
    assert report.items[0].name == "bounces.mbox message 1"
    assert "too large" in report.items[5].note
    assert_genuine_honoured(world)


def test_a_message_the_mail_client_has_seen_is_read_and_keeps_its_flags(world: World, tmp_path: Path) -> None:
    mailto, bounce = genuine(world)
    maildir = maildir_of(tmp_path / "Maildir", [])
    (maildir / "cur" / "1764063600.M0P1.test.example:2,F").write_bytes(mailto)  # flagged, unread
    (maildir / "cur" / "1764063601.M1P1.test.example:2,S").write_bytes(bounce)  # seen: left alone
    report = process_inbound(world.database, world.config, maildir)
    assert [item.kind for item in report.items] == [InboundKind.UNSUBSCRIBE]
    assert sorted(p.name for p in (maildir / "cur").iterdir()) == [
        "1764063600.M0P1.test.example:2,FS", "1764063601.M1P1.test.example:2,S"]


def test_mail_stays_in_new_when_the_database_is_unavailable(world: World, tmp_path: Path) -> None:
    maildir = maildir_of(tmp_path / "Maildir", list(genuine(world)))
    config_path = write_config(tmp_path / "mailer.toml", f"sqlite:///{tmp_path}/no/such/dir/mailer.db")
    result = Cli(config_path)("inbound", "process", str(maildir), ok=False)
    assert result.exit_code == 75
    assert len(list((maildir / "new").iterdir())) == 2 and not list((maildir / "cur").iterdir())


# --- properties -------------------------------------------------------------------------------

ADDRESSES = ["ana@example.net", "bob@example.org", "eve@example.com", "postmaster@example.org"]
SENDERS = ["abuse@attacker.example", "MAILER-DAEMON@mx.example.org", "fbl@evil.fbl.example.net",
           "fbl.example.net@attacker.example", "fbl@fbl.example.net", "ana@example.net", "",
           # the trusted loop only in a display name, an encoded word or beside a second mailbox
           "fbl@fbl.example.net <abuse@attacker.example>", "=?utf-8?q?fbl=40fbl.example.net?= <abuse@attacker.example>",
           "<fbl@fbl.example.net>@attacker.example", "fbl@fbl.example.net, abuse@attacker.example"]
TRUSTED = "fbl.example.net"
words = st.text(st.characters(min_codepoint=32, max_codepoint=126, exclude_characters="\\"), max_size=30)


@st.composite
def leaf(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["report", "dsn", "headers", "text"]))
    if kind == "report":
        fields = [f"Feedback-Type: {draw(st.sampled_from(['abuse', 'not-spam', 'ABUSE']))}", "Version: 1"]
        fields += [f"Original-Rcpt-To: <{a}>" for a in draw(st.lists(st.sampled_from(ADDRESSES), max_size=2))]
        return "Content-Type: message/feedback-report\n\n" + "\n".join(fields) + "\n"
    if kind == "dsn":
        blocks = [f"Final-Recipient: rfc822; {draw(st.sampled_from(ADDRESSES))}\n"
                  f"Action: {draw(st.sampled_from(['failed', 'delayed', 'delivered']))}\n"
                  f"Status: {draw(st.sampled_from(['5.1.1', '4.2.2', '5.7.1', '2.0.0']))}\n"
                  for _block in range(draw(st.integers(1, 3)))]
        return "Content-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example.org\n\n" + "\n".join(blocks)
    if kind == "headers":
        to = ", ".join(draw(st.lists(st.sampled_from(ADDRESSES), min_size=1, max_size=3)))
        return f"Content-Type: text/rfc822-headers\n\nFrom: news@harmonymails.com\nTo: {to}\nSubject: {draw(words)}\n"
    return f"Content-Type: text/plain\n\n{draw(words)}\n550 5.1.1 <{draw(st.sampled_from(ADDRESSES))}>\n"


def tree(depth: int = 0) -> st.SearchStrategy[str]:
    if depth >= 3:
        return leaf()
    boundary = f"part-{depth}"
    multipart = st.lists(tree(depth + 1), min_size=1, max_size=3).map(lambda parts: (
        f"Content-Type: multipart/report; report-type=feedback-report; boundary=\"{boundary}\"\n\n"
        + "".join(f"--{boundary}\n{part}\n" for part in parts) + f"--{boundary}--\n"))
    enclosed = tree(depth + 1).map(
        lambda inner: "Content-Type: message/rfc822\n\nFrom: news@harmonymails.com\nTo: ana@example.net\n" + inner)
    return st.one_of(leaf(), multipart, enclosed)


@st.composite
def mime_message(draw: st.DrawFn) -> str:
    headers = [f"From: {draw(st.sampled_from(SENDERS))}",
               f"To: {', '.join(draw(st.lists(st.sampled_from(ADDRESSES), max_size=3)))}",
               f"Subject: {draw(words)}",
               f"Message-ID: <{draw(st.integers(0, 10**9))}@example.org>"]
    if draw(st.booleans()):
        headers.append(f"Auto-Submitted: {draw(st.sampled_from(['auto-replied', 'no']))}")
    return "\n".join(headers) + "\nMIME-Version: 1.0\n" + draw(tree())


@given(raw=st.binary(max_size=3000))
def test_arbitrary_bytes_never_raise_and_change_nothing(world: World, raw: bytes) -> None:
    before = snapshot(world.database)
    item = process_message(world.database, world.config, raw)
    assert item.kind in InboundKind
    assert snapshot(world.database) == before


@given(text=mime_message(), with_token=st.booleans())
def test_only_our_token_or_a_trusted_feedback_loop_ever_suppresses(
    world: World, text: str, with_token: bool
) -> None:
    trusting(world, TRUSTED)
    if with_token:
        text += f"\nList-Unsubscribe: <https://harmonymails.com/u/{world.ana.token(world.config)}>\n"
    before = snapshot(world.database)
    # the world outlives one example: an earlier trusted report may already have removed Bob
    bob_before = statuses(world.database, world.bob)
    bob_was_suppressed = address_hash("bob@example.org") in {s.address_hash for s in suppressions(world.database)}
    item = process_message(world.database, world.config, text.encode())
    assert item.kind in InboundKind
    from_trusted = text.startswith("From: fbl@fbl.example.net\n")
    if snapshot(world.database) != before:
        assert with_token or from_trusted, item
    if not from_trusted:
        # nothing names Bob in a way we can verify: he stays as he was, whatever the report says
        assert statuses(world.database, world.bob) == bob_before
        bob_suppressed = address_hash("bob@example.org") in {s.address_hash for s in suppressions(world.database)}
        assert bob_suppressed == bob_was_suppressed


# a display part that looks like, or decodes to, an address; the mailbox itself is the stranger's
VICTIMS = ["ana@example.net", "fbl@fbl.example.net", "bob@example.org"]


def encoded_word(text: str, encoding: str) -> str:
    if encoding == "b":
        return f"=?utf-8?b?{base64.b64encode(text.encode()).decode()}?="
    return f"=?utf-8?q?{quopri.encodestring(text.encode(), header=True).decode().replace('@', '=40')}?="


@st.composite
def deceptive_from(draw: st.DrawFn) -> tuple[str, str]:
    """A From header whose display part names a victim, and the one addr-spec it really has."""
    victim, stranger = draw(st.sampled_from(VICTIMS)), draw(st.sampled_from(["eve@attacker.example", "x@evil.example"]))
    comment = draw(words).replace("(", "").replace(")", "")
    name = draw(st.sampled_from([victim, f'"{victim}"', f"{victim} ({comment})",
                                 encoded_word(victim, "b"), encoded_word(victim, "q")]))
    return f"{name} <{stranger}>", stranger


@given(header=deceptive_from())
def test_a_from_header_identifies_nobody_but_its_addr_spec(header: tuple[str, str]) -> None:
    value, stranger = header
    msg = email.message_from_bytes(f"From: {value}\nSubject: hi\n\nhello\n".encode())
    assert sender_address(msg) in ("", stranger), value


@given(header=deceptive_from())
def test_mail_to_the_unsubscribe_address_never_unsubscribes_the_person_a_from_name_shows(
    world: World, header: tuple[str, str]
) -> None:
    value, _stranger = header
    raw = f"From: {value}\nTo: unsubscribe@harmonymails.com\nSubject: unsubscribe\n\nplease\n".encode()
    before = snapshot(world.database)
    item = process_message(world.database, world.config, raw)
    assert item.kind is InboundKind.UNMATCHED, item
    assert snapshot(world.database) == before
