"""From and Reply-To: one mailbox, ours, however the operator, the marketer or the data spells a name."""

from __future__ import annotations

import email.header
import json
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import getaddresses, parseaddr
from pathlib import Path

import pytest
import sqlalchemy as sa
from cli_helpers import Cli, write_config
from compose_helpers import make_campaign, make_config, make_recipient, parse, render
from hypothesis import given, settings
from hypothesis import strategies as st
from smtp_faults import FaultyServer

from mailer.addresses import is_plain_address, parse_mailbox
from mailer.config import load_config
from mailer.content.compliance import check_from, check_message, check_sender_headers
from mailer.content.compose import one_line
from mailer.db import Database
from mailer.errors import ConfigError, InvalidInputError
from mailer.models import Campaign

SENDER = "news@harmonymails.com"
# the display name decodes to "CEO <ceo@bank.com>": pasted into the header, readers see that address
SMUGGLED = f"=?utf-8?b?Q0VPIDxjZW9AYmFuay5jb20+?= <{SENDER}>"
HOSTILE_FROM = [
    SMUGGLED,
    f"ceo@bank.com <{SENDER}>",
    f'"CEO <ceo@bank.com>" <{SENDER}>',
    f"CEO <ceo@bank.com>, <{SENDER}>",
    f"Team: <{SENDER}>;",
    f"Harmony <{SENDER}",
    f"Harmony\r\nBcc: x@evil.test <{SENDER}>",
]


@pytest.fixture
def news(cli: Cli) -> Cli:
    cli("list", "create", "news")
    cli("subscriber", "add", "ana@example.com", "--list", "news", "--name", "Ana Lima")
    return cli


def careless_read(raw_value: str) -> list[str]:
    """What a reader that decodes encoded words before parsing takes for the addresses."""
    decoded = str(email.header.make_header(email.header.decode_header(raw_value)))
    return [address.lower() for _, address in getaddresses([decoded]) if is_plain_address(address)]


def raw_header(data: bytes, name: str) -> str:
    head = data.split(b"\r\n\r\n", 1)[0].decode("ascii")
    lines = head.split("\r\n")
    for index, line in enumerate(lines):
        if line.lower().startswith(name.lower() + ":"):
            value = [line.split(":", 1)[1]]
            for cont in lines[index + 1:]:
                if cont[:1] not in (" ", "\t"):
                    break
                value.append(cont)
            return "\r\n".join(value).strip()
    raise AssertionError(f"no {name} header")


@pytest.mark.parametrize("value", HOSTILE_FROM)
def test_create_refuses_a_from_that_is_not_one_plain_mailbox(news: Cli, value: str) -> None:
    result = news("campaign", "create", "--list", "news", "--subject", "Spring concerts",
                  "--template", "welcome", "--from", value, ok=False)
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: From ") and result.stderr.count("\n") == 1, result.stderr
    assert json.loads(news("campaign", "ls", "--json").output) == []


def test_the_smuggled_name_is_refused_with_a_reason_the_marketer_can_act_on(news: Cli) -> None:
    result = news("campaign", "create", "--list", "news", "--subject", "Spring concerts",
                  "--template", "welcome", "--from", SMUGGLED, ok=False)
    assert "write the name as plain text" in result.stderr


@pytest.mark.parametrize(("key", "value", "reason"), [
    ("from", SMUGGLED, "plain text"),
    ("from", f"CEO <ceo@bank.com>, <{SENDER}>", "not one mailbox"),
    ("from", f'"Billing @ Bank" <{SENDER}>', "must not contain <, > or @"),
    ("reply_to", "help@harmonymails.com, ceo@bank.com", "not one mailbox"),
    ("reply_to", "=?utf-8?q?ceo=40bank.com?= <help@harmonymails.com>", "plain text"),
])
def test_config_refuses_a_sender_mailbox_with_file_key_and_reason(
    tmp_path: Path, database: Database, key: str, value: str, reason: str
) -> None:
    path = write_config(tmp_path / "mailer.toml", database.url,
                        extra=f"[sender]\n{key} = {json.dumps(value)}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert str(caught.value).startswith(f"{path}: sender.{key}: ")
    assert reason in str(caught.value) and "\n" not in str(caught.value)
    result = Cli(path)("campaign", "ls", ok=False)
    assert result.exit_code == 1 and result.stderr.count("\n") == 1 and f"sender.{key}" in result.stderr


def test_the_gate_refuses_a_stored_campaign_with_a_smuggled_from(news: Cli, database: Database) -> None:
    news("campaign", "create", "--list", "news", "--subject", "Spring concerts", "--template", "welcome")
    with database.session() as session:  # written before this version checked --from
        session.execute(sa.update(Campaign).values(from_address=SMUGGLED))
    result = news("campaign", "check", "1", ok=False)
    assert result.exit_code == 1
    assert "write the name as plain text" in result.stderr
    refused = news("campaign", "send", "1", ok=False)
    assert refused.exit_code == 1 and "write the name as plain text" in refused.stderr


def test_the_gate_rereads_a_finished_from_as_careless_readers_do() -> None:
    config = make_config()
    message = render(config)
    assert check_sender_headers(config, message.data, "") == []
    # the message as it was built before: the typed name pasted into the header
    pasted = message.data.replace(
        raw_header(message.data, "From").encode("ascii"), SMUGGLED.encode("ascii"), 1
    )
    problems = check_sender_headers(config, pasted, "")
    assert problems == [f"the From header {SMUGGLED!r} does not read as the one mailbox {SENDER}"]
    two = message.data.replace(b"From: ", b"From: ceo@bank.com, ", 1)
    assert check_sender_headers(config, two, "") != []
    foreign = message.data.replace(b"From: ", b"Reply-To: ceo@bank.com\r\nFrom: ", 1)
    assert check_sender_headers(config, foreign, "") == [
        "the message has a Reply-To header, but none is configured"]


def test_reply_to_is_one_mailbox_and_must_be_there_when_configured() -> None:
    config = make_config(sender={"reply_to": "\"Équipe, Support\" <help@harmonymails.com>"})
    message = render(config)
    parsed = parse(message.data)
    [reply_to] = parsed["Reply-To"].addresses
    assert (reply_to.display_name, reply_to.addr_spec) == ("Équipe, Support", "help@harmonymails.com")
    assert careless_read(raw_header(message.data, "Reply-To")) == ["help@harmonymails.com"]
    assert check_sender_headers(config, message.data, "") == []
    dropped = message.data.replace(b"Reply-To: ", b"X-Reply-To: ", 1)
    assert check_sender_headers(config, dropped, "") == ["the message has 0 Reply-To headers, not 1"]


def test_a_sent_message_names_the_sender_once_and_decodes_the_name_exactly(
    tmp_path: Path, database: Database, smtp_server: FaultyServer
) -> None:
    name = 'Harmony «Ünïcode» "Team", Lisboa'
    path = write_config(tmp_path / "mailer.toml", database.url, smtp_server,
                        extra='[sender]\nreply_to = "Help Desk <help@harmonymails.com>"\n')
    cli = Cli(path)
    cli("list", "create", "news")
    cli("subscriber", "add", "ana@example.com", "--list", "news", "--name", "Ana Lima")
    from_value = str(Address(display_name=name, addr_spec=SENDER))
    cli("campaign", "create", "--list", "news", "--subject", "Spring concerts", "--template", "welcome",
        "--from", from_value)
    cli("campaign", "send", "1")
    [received] = smtp_server.messages
    message = parse(received.data)
    [sender] = message["From"].addresses
    assert (sender.display_name, sender.addr_spec) == (name, SENDER)
    assert careless_read(raw_header(received.data, "From")) == [SENDER]
    [reply_to] = message["Reply-To"].addresses
    assert (reply_to.display_name, reply_to.addr_spec) == ("Help Desk", "help@harmonymails.com")


# any text, with what breaks headers made likely: line breaks, NUL, encoded-word lookalikes,
# quotes, backslashes, angle brackets, commas and non-ASCII letters
_TRICKY = st.sampled_from(["\r", "\n", "\r\n", "\x00", "=?utf-8?b?Q0VPIDxjZW9AYmFuay5jb20+?=", "=?", "?=",
                           '"', "\\", "<", ">", "@", ",", ";", ":", " ", "  ", "\t", "é", "€", "日本",
                           "\u2028", "\x85", "Bcc: x@evil.test", "ceo@bank.com"])
TEXT = st.lists(st.one_of(st.text(max_size=20), _TRICKY), max_size=12).map("".join)


def exact_display_name(raw_value: str) -> str:
    """The display name of a one-mailbox header, RFC 2047 decoded exactly.

    The standard library's address parser folds runs of blanks inside encoded words, so it
    cannot say whether a name survived exactly; a plain RFC 2047 decoder can.
    """
    name, _ = parseaddr(" ".join(raw_value.split("\r\n")))
    if raw_value.lstrip().startswith("=?"):
        return str(email.header.make_header(email.header.decode_header(raw_value.rpartition(" <")[0])))
    return name


def _header_names(data: bytes) -> list[str]:
    head = data.split(b"\r\n\r\n", 1)[0].decode("ascii")
    return [line.split(":", 1)[0] for line in head.split("\r\n") if line[:1] not in (" ", "\t")]


@settings(max_examples=80)
@given(from_name=TEXT, subject=TEXT, name=TEXT, city=TEXT)
def test_no_data_makes_a_header_and_names_decode_back(from_name: str, subject: str, name: str, city: str) -> None:
    config = make_config()
    try:
        from_value = str(Address(display_name=from_name, addr_spec=SENDER))
    except ValueError:  # a line break: the stdlib will not quote it, a marketer could still type it
        from_value = f"{from_name} <{SENDER}>"
    try:
        sender = parse_mailbox(from_value)
    except InvalidInputError:
        assert check_from(config, from_value) != []  # refused at create and by the gate alike
        from_value, sender = SENDER, parse_mailbox(SENDER)
    campaign = make_campaign(subject=subject or "x", from_address=from_value,
                             html="<p>{{ subscriber.name }} in {{ subscriber.attributes.city }}</p>",
                             text="{{ subscriber.name }} in {{ subscriber.attributes.city }}\n")
    message = render(config, campaign, make_recipient(name=name, attributes={"city": city}))
    data = message.data

    assert _header_names(data) == [
        "From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "List-Id", "List-Unsubscribe",
        "List-Unsubscribe-Post", "Content-Type"]
    header_problems = [p for p in check_message(config, message) if "footer" not in p]
    assert not [p for p in header_problems if "header" in p or "CR or LF" in p or "octets" in p
                or "parse" in p], header_problems
    assert check_sender_headers(config, data, from_value) == []
    parsed: EmailMessage = parse(data)
    [from_mailbox] = parsed["From"].addresses
    assert from_mailbox.addr_spec == SENDER
    assert exact_display_name(raw_header(data, "From")) == sender.display_name
    assert set(careless_read(raw_header(data, "From"))) <= {SENDER}
    assert str(parsed["Subject"]) == one_line(subject or "x")
    [to] = parsed["To"].addresses
    assert to.addr_spec == "ana@example.com"
    assert exact_display_name(raw_header(data, "To")) == one_line(name)


# characters that show as @, < or > in a mail client without being them
ADDRESS_MARK_LOOKALIKES = ["\uff20", "\ufe6b", "\ufe64", "\ufe65", "\uff1c", "\uff1e", "\u2039", "\u203a",
                           "\u3008", "\u3009", "\u27e8", "\u27e9", "\u2329", "\u232a", "\u02c2", "\u02c3"]


@pytest.mark.parametrize("mark", ADDRESS_MARK_LOOKALIKES, ids=[f"U+{ord(c):04X}" for c in ADDRESS_MARK_LOOKALIKES])
def test_create_refuses_a_name_that_shows_another_address_in_look_alike_marks(news: Cli, mark: str) -> None:
    value = f'"PayPal Support{mark}paypal.com" <{SENDER}>'
    result = news("campaign", "create", "--list", "news", "--subject", "Spring concerts",
                  "--template", "welcome", "--from", value, ok=False)
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: From ") and result.stderr.count("\n") == 1, result.stderr
    assert "look-alikes of <, > or @" in result.stderr
    assert json.loads(news("campaign", "ls", "--json").output) == []
    assert check_from(make_config(), value) != []  # a stored campaign with it fails the gate too


def test_names_with_other_symbols_and_scripts_still_pass(news: Cli) -> None:
    for name in ("Café Ünïcode — News", "\uff28\uff41\uff52\uff4d\uff4f\uff4e\uff59 News", "Harmony » Weekly", "音楽ニュース"):
        news("campaign", "create", "--list", "news", "--subject", "Spring concerts",
             "--template", "welcome", "--from", f'"{name}" <{SENDER}>')
    assert len(json.loads(news("campaign", "ls", "--json").output)) == 4


@settings(max_examples=150)
@given(before=st.text(max_size=12), mark=st.sampled_from(ADDRESS_MARK_LOOKALIKES), after=st.text(max_size=12))
def test_no_name_with_a_look_alike_mark_becomes_a_sender(before: str, mark: str, after: str) -> None:
    with pytest.raises(InvalidInputError):
        parse_mailbox(str(Address(display_name=f"{before}{mark}{after}", addr_spec=SENDER))
                      if not any(c in before + after for c in "\r\n") else f"{before}{mark}{after} <{SENDER}>")
