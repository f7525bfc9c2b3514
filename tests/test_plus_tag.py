"""The plus-tagged unsubscribe address: within 64 octets for any id, and recognised when mail comes back."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cli_helpers import TEST_SECRET_KEY, Cli
from hypothesis import given, settings
from hypothesis import strategies as st
from smtp_faults import FaultyServer

from mailer.config import config_from_dict, load_config
from mailer.db import Database
from mailer.errors import ConfigError
from mailer.plus_tag import (
    MAX_LOCAL_PART_OCTETS,
    ROOM_NEEDED,
    make_unsubscribe_address,
    read_unsubscribe_tag,
)
from mailer.tokens import UnsubscribeClaim

KEY = "plus-tag-key-0123456789abcdef"
LONGEST_LOCAL = "u" * (MAX_LOCAL_PART_OCTETS - 1 - ROOM_NEEDED)


@settings(max_examples=200)
@given(
    local=st.integers(min_value=1, max_value=len(LONGEST_LOCAL)).map(lambda n: "x" * n),
    subscriber_id=st.integers(min_value=1, max_value=2**63 - 1),
    list_id=st.none() | st.integers(min_value=1, max_value=2**63 - 1),
    campaign_id=st.none() | st.integers(min_value=1, max_value=2**63 - 1),
)
def test_the_local_part_fits_64_octets_and_reads_back(
    local: str, subscriber_id: int, list_id: int | None, campaign_id: int | None
) -> None:
    mailto = f"{local}@harmonymails.com"
    claim = UnsubscribeClaim(subscriber_id, list_id, campaign_id)
    address = make_unsubscribe_address(KEY, mailto, claim)
    address_local, _, domain = address.rpartition("@")
    assert domain == "harmonymails.com"
    assert len(address_local.encode("ascii")) <= MAX_LOCAL_PART_OCTETS
    if address == mailto:  # ids too long for any tag: the subject still carries the token
        assert subscriber_id >= 2**31 or (list_id or 0) >= 2**31
        return
    tag = address_local.partition("+")[2]
    read = read_unsubscribe_tag((KEY,), tag.upper())  # a relay may change the case
    assert read is not None
    assert (read.subscriber_id, read.list_id) == (subscriber_id, list_id)
    assert read.campaign_id in (campaign_id, None)


def test_ids_a_database_reaches_always_get_a_full_tag() -> None:
    biggest = 2**31 - 1
    claim = UnsubscribeClaim(biggest, biggest, biggest)
    address = make_unsubscribe_address(KEY, f"{LONGEST_LOCAL}@harmonymails.com", claim)
    local = address.rpartition("@")[0]
    assert len(local) == MAX_LOCAL_PART_OCTETS
    assert read_unsubscribe_tag((KEY,), local.partition("+")[2]) == claim


def test_a_forged_or_foreign_tag_unsubscribes_nobody() -> None:
    address = make_unsubscribe_address(KEY, "unsubscribe@harmonymails.com", UnsubscribeClaim(12, 3, 7))
    tag = address.rpartition("@")[0].partition("+")[2]
    assert read_unsubscribe_tag((KEY,), tag) == UnsubscribeClaim(12, 3, 7)
    assert read_unsubscribe_tag(("another-key-0123456789abcdef",), tag) is None
    assert read_unsubscribe_tag((KEY,), tag.replace("c-3-", "d-3-", 1)) is None  # someone else's id
    assert read_unsubscribe_tag((KEY,), "newsletter") is None


@pytest.mark.parametrize(("mailto", "plus_tag", "reason"), [
    (f"{'u' * 33}@harmonymails.com", True, f"leaves 30 of the {ROOM_NEEDED} octets a plus-tag needs"),
    ("news+unsub@harmonymails.com", True, "must not contain +"),
    (f"{'u' * 65}@harmonymails.com", False, "longer than 64 octets"),
])
def test_config_refuses_a_mailto_that_leaves_no_room(mailto: str, plus_tag: bool, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_dict({"unsubscribe": {"mailto": mailto, "mailto_plus_tag": plus_tag}}, source="m.toml")
    assert str(caught.value).startswith("m.toml: unsubscribe.mailto: ")
    assert reason in str(caught.value) and "\n" not in str(caught.value)
    config_from_dict({"unsubscribe": {"mailto": f"{LONGEST_LOCAL}@harmonymails.com", "mailto_plus_tag": True}})


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_reply_to_the_tagged_address_unsubscribes_even_without_its_subject(
    tmp_path: Path, database: Database, smtp_server: FaultyServer
) -> None:
    mailto = f"{LONGEST_LOCAL}@harmonymails.com"
    path = tmp_path / "mailer.toml"
    path.write_text(
        f'[database]\nurl = "{database.url}"\n\n'
        f'[unsubscribe]\nsecret_keys = ["{TEST_SECRET_KEY}"]\nmailto = "{mailto}"\nmailto_plus_tag = true\n\n'
        f'[smtp]\nhost = "{smtp_server.host}"\nport = {smtp_server.port}\nstarttls = "off"\ntimeout = 5\n',
        encoding="utf-8",
    )
    assert load_config(path, environ={}).unsubscribe.mailto_plus_tag
    cli = Cli(path)
    cli("list", "create", "news")
    cli("subscriber", "add", "ana@example.com", "--list", "news")
    cli("subscriber", "add", "bo@example.com", "--list", "news")
    cli("campaign", "create", "--list", "news", "--subject", "Spring concerts", "--template", "welcome")
    cli("campaign", "send", "1")
    sent = {m.rcpt_tos[0]: m.data for m in smtp_server.messages}
    head = sent["ana@example.com"].split(b"\r\n\r\n", 1)[0].decode("ascii").replace("\r\n ", " ")
    tagged = re.search(r"<mailto:([^?>]+)\?", head)
    assert tagged is not None
    local = tagged[1].rpartition("@")[0]
    assert local.startswith(LONGEST_LOCAL + "+") and len(local) <= MAX_LOCAL_PART_OCTETS
    # a mail client that sends to the address and drops the subject, through a relay that upper-cases
    reply = (f"From: someone-else@example.org\r\nTo: {tagged[1].upper()}\r\nSubject: \r\n"
             "Message-ID: <reply-1@example.org>\r\n\r\nplease stop\r\n")
    result = cli("inbound", "process", "-", input=reply)
    assert "unsubscribes: 1" in result.output
    listed = cli("suppress", "ls").output
    # Ana alone, and for the reason she gave: the listing is "<when>  <reason>  <address>  <source>"
    assert listed.count("\n") == 1
    assert listed.split("  ", 1)[1] == "unsubscribed  ana@example.com  mailto\n"
    assert "bo@example.com" not in listed and "b***@example.com" not in listed
