"""Whose complaints count: a feedback loop's report is believed only on our own MTA's DMARC pass for it."""

from __future__ import annotations

import email
from pathlib import Path

import pytest
from cli_helpers import Cli, write_config
from hypothesis import example, given, settings
from hypothesis import strategies as st
from recipient_helpers import suppressions
from test_inbound import World

from mailer.config import Config, config_from_dict, load_config
from mailer.db import Database, address_hash
from mailer.inbound.feedback_loops import is_trusted_feedback_loop
from mailer.models import SuppressionReason

OUR_MTA = "mx.harmonymails.com"
LOOP = "fbl.example.net"
INBOUND = f'[inbound]\nfeedback_loop_senders = ["{LOOP}"]\ntrusted_authserv_ids = ["{OUR_MTA}"]\n'
# what our MTA writes for an attacker whose envelope sender is
# <"x;dmarc=pass header.from=fbl.example.net;"@evil.example> and who signs as evil.example
FORGED = [
    f'{OUR_MTA}; spf=pass smtp.mailfrom="x;dmarc=pass header.from={LOOP};"@evil.example',
    f"{OUR_MTA}; dkim=pass header.d=evil.example; dmarc=pass (p=reject) header.from=evil.example",
]
GENUINE = f"{OUR_MTA}; spf=pass smtp.mailfrom={LOOP}; dkim=pass header.d={LOOP}; dmarc=pass (p=reject) header.from={LOOP}"


def trusted_config() -> Config:
    return config_from_dict({"inbound": {"feedback_loop_senders": [LOOP], "trusted_authserv_ids": [OUR_MTA]}})


def believed(*results: str, config: Config | None = None) -> bool:
    headers = "".join(f"Authentication-Results: {value}\r\n" for value in results)
    msg = email.message_from_bytes(f"{headers}From: fbl@{LOOP}\r\nSubject: report\r\n\r\nbody\r\n".encode())
    return is_trusted_feedback_loop(config or trusted_config(), msg, f"fbl@{LOOP}")


@pytest.mark.parametrize("results", [
    FORGED,
    [f'{OUR_MTA}; spf=pass smtp.helo="a;dmarc=pass header.from={LOOP}" smtp.mailfrom=x@evil.example',
     f"{OUR_MTA}; dmarc=pass header.from=evil.example"],
    [f'{OUR_MTA}; spf=pass smtp.mailfrom="x\\";dmarc=pass header.from={LOOP};"@evil.example; '
     "dmarc=fail header.from=evil.example"],
    [f"{OUR_MTA}; spf=pass (sender said: dmarc=pass header.from={LOOP}) smtp.mailfrom=x@evil.example"],
    [f"{OUR_MTA}; spf=pass (a (nested; dmarc=pass header.from={LOOP}) note) smtp.mailfrom=x@evil.example"],
    [f"{OUR_MTA}; dkim=pass header.d=evil.example header.from={LOOP}; dmarc=fail header.from={LOOP}"],
    [f"{OUR_MTA}; dmarc=pass header.from=evil.example; spf=pass header.from={LOOP}"],
    [f"{OUR_MTA}; dmarc=fail reason=\"dmarc=pass header.from={LOOP}\" header.from={LOOP}"],
    [f'{OUR_MTA}; dmarc=pass header.from="x;"@{LOOP}'],
    # our MTA's header below decides nothing: the topmost of ours is the one it wrote last
    [f"{OUR_MTA}; dmarc=none header.from={LOOP}", GENUINE],
    # one our MTA could not have written whole is no pass
    [f'{OUR_MTA}; dmarc=pass header.from={LOOP}; spf=pass smtp.mailfrom="unclosed'],
    [f"{OUR_MTA}; dmarc=pass header.from={LOOP}; spf=pass ({'(' * 20}deep{')' * 20})"],
    [f"{OUR_MTA}; dmarc=pass header.from={LOOP} " + "x" * 5000],
], ids=["quoted smtp.mailfrom", "quoted smtp.helo", "escaped quote", "comment", "nested comment",
        "another method's header.from", "another method's pass", "quoted reason", "quoted local part",
        "a pass below our none", "unclosed quote", "comments too deep", "too long"])
def test_text_inside_quotes_comments_or_other_methods_is_never_a_dmarc_pass(results: list[str]) -> None:
    assert not believed(*results)


@pytest.mark.parametrize("results", [
    [GENUINE],
    [f"{OUR_MTA} 1; dmarc=pass header.from={LOOP}"],
    [f"{OUR_MTA.upper()}; DMARC = Pass (p=none\r\n dis=none) header.from = {LOOP.upper()}"],
    [f'"{OUR_MTA}"; dmarc=pass policy.dmarc=reject header.from="{LOOP}"'],
    [f"{OUR_MTA}; spf=pass smtp.mailfrom=\"a;b\"@{LOOP}; dmarc=pass header.from={LOOP}",
     "attacker.example; dmarc=fail header.from=fbl.example.net"],
    ["attacker.example; dmarc=fail header.from=fbl.example.net", GENUINE],
], ids=["plain", "version", "case, spaces and folding", "quoted values", "quoted value before", "below another id"])
def test_our_mtas_own_dmarc_pass_for_the_loops_domain_is_believed(results: list[str]) -> None:
    assert believed(*results)


def quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def comment(text: str) -> str:
    return "(" + text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ")"


# what an attacker would write, with the separators that matter most, or any text a header holds
hostile = st.lists(st.sampled_from([*';="()\\ .@', "dmarc", "pass", "header.from", LOOP, "x"]),
                   max_size=20).map("".join) | st.text(
    st.characters(blacklist_categories=("Cc", "Cs")), max_size=60)  # a header line holds no CR or LF


@settings(max_examples=150)
@given(hostile, hostile, hostile)
@example(f"x;dmarc=pass header.from={LOOP};", f"a;dmarc=pass header.from={LOOP}", f"dmarc=pass header.from={LOOP}")
def test_attacker_text_in_quoted_strings_and_comments_never_yields_a_pass(
    mailfrom: str, helo: str, note: str
) -> None:
    ours = (f"{OUR_MTA}; spf=pass {comment(note)} smtp.mailfrom={quoted(mailfrom)}@evil.example "
            f"smtp.helo={quoted(helo)}; dkim=pass header.d=evil.example")
    assert not believed(ours, f"{OUR_MTA}; dmarc=pass header.from=evil.example")
    assert not believed(f"{ours}; dmarc=fail header.from={LOOP}")
    # and read as quoted text it leaves the real result after it intact
    assert believed(f"{ours}; dmarc=pass header.from={LOOP}")


def test_a_forged_complaint_behind_a_quoted_envelope_sender_suppresses_nobody(
    tmp_path: Path, database: Database
) -> None:
    config_path = write_config(tmp_path / "mailer.toml", database.url, extra=INBOUND)
    world = World(database, load_config(config_path, environ={}))
    report = (tmp_path / "fixtures").joinpath("arf.eml")
    report.parent.mkdir()
    raw = world.fixture("isp_complaint_by_address").replace(b"abuse-reports@isp.example.net", f"fbl@{LOOP}".encode())
    report.write_bytes("".join(f"Authentication-Results: {v}\n" for v in FORGED).encode() + raw)

    output = Cli(config_path)("inbound", "process", str(report)).output

    assert "unverified complaints: 1\n" in output and "\ncomplaints: 0\n" in output, output
    assert suppressions(database) == []

    # the same report with our MTA's real pass for the loop is believed
    genuine = tmp_path / "genuine.eml"
    genuine.write_bytes(f"Authentication-Results: {GENUINE}\n".encode()
                        + raw.replace(b"Message-ID: <arf-", b"Message-ID: <genuine-arf-"))
    output = Cli(config_path)("inbound", "process", str(genuine)).output
    assert "\ncomplaints: 1\n" in output, output
    [entry] = suppressions(database)
    assert (entry.address_hash, entry.reason) == (address_hash("ana@example.net"), SuppressionReason.COMPLAINT)
