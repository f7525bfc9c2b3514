"""Bytes that are not UTF-8 on the command line: one line and nothing stored; file names still work."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from cli_helpers import Cli, write_config
from hypothesis import given, settings
from hypothesis import strategies as st
from sending_helpers import add_audience, delivery_states, make_campaign
from smtp_faults import FaultyServer

from mailer.audit import insert_event
from mailer.campaigns import create_campaign
from mailer.config import Config
from mailer.db import Database
from mailer.errors import InvalidInputError, check_unicode
from mailer.models import (
    AuditEvent,
    Campaign,
    DeliveryState,
    MailingList,
    Subscriber,
    Subscription,
    Suppression,
    SuppressionReason,
)
from mailer.recipients.lists import create_list
from mailer.recipients.subscribers import check_attribute_value, check_name
from mailer.recipients.suppression import AuditNote, suppress

LATIN1 = b"\x85"  # NEL in Latin-1 and cp1252; never a whole character in UTF-8


def run_mailer(config_path: Path, *args: str | bytes) -> subprocess.CompletedProcess[bytes]:
    """`mailer` in its own process, its argv given as raw bytes as a Latin-1 terminal would."""
    # UTF-8 mode: the interpreter decodes argv as a UTF-8 system would, whatever this machine's locale
    env = {**os.environ, "PYTHONUTF8": "1"}
    return subprocess.run(
        [sys.executable, "-m", "mailer", "--config", str(config_path), *args],
        capture_output=True, env=env, timeout=60, check=False,
    )


def stored(database: Database) -> dict[str, int]:
    with database.session() as session:
        return {
            model.__name__: session.scalar(sa.select(sa.func.count()).select_from(model)) or 0
            for model in (MailingList, Subscriber, Subscription, Suppression, Campaign, AuditEvent)
        }


@pytest.mark.parametrize(
    ("args", "option"),
    [
        ((b"list", b"create", b"bad1", b"--title", b"T" + LATIN1), "--title"),
        ((b"subscriber", b"add", b"s1@example.com", b"--list", b"news", b"--name", b"N" + LATIN1), "--name"),
        ((b"suppress", b"add", b"q2@example.com", b"--reason", b"R" + LATIN1), "--reason"),
        ((b"campaign", b"create", b"--list", b"news", b"--subject", b"Sub" + LATIN1 + b"ject",
          b"--template", b"welcome"), "--subject"),
        ((b"subscriber", b"add", b"s2@example.com", b"--list", b"news", b"--attr", b"city=C" + LATIN1), "--attr"),
        ((b"subscriber", b"add", b"s" + LATIN1 + b"3@example.com", b"--list", b"news"), "EMAIL"),
        ((b"list", b"create", b"n" + LATIN1), "NAME"),
    ],
)
def test_text_that_is_not_utf8_is_one_line_and_stores_nothing(
    cli: Cli, config_path: Path, database: Database, args: tuple[bytes, ...], option: str
) -> None:
    cli("list", "create", "news")
    before = stored(database)

    result = run_mailer(config_path, *args)

    assert result.returncode == 1
    assert result.stderr == f"Error: {option} is not valid UTF-8\n".encode()
    assert result.stdout == b""
    assert stored(database) == before


def test_a_file_name_that_is_not_utf8_still_imports(cli: Cli, config_path: Path, tmp_path: Path) -> None:
    cli("list", "create", "news")
    path = os.path.join(os.fsencode(tmp_path), b"people" + LATIN1 + b".csv")
    with open(path, "wb") as handle:
        handle.write(b"email,name\nana@example.com,Ana\n")

    result = run_mailer(config_path, b"subscriber", b"import", path, b"--list", b"news")

    assert result.returncode == 0, result.stderr
    assert b"added                 1" in result.stdout
    shown = cli("subscriber", "show", "ana@example.com").output
    assert "via import:people\\x85.csv" in shown


def test_a_template_file_name_that_is_not_utf8_still_makes_a_campaign(
    cli: Cli, config_path: Path, database: Database, tmp_path: Path
) -> None:
    cli("list", "create", "news")
    path = os.path.join(os.fsencode(tmp_path), b"summer" + LATIN1 + b".html.j2")
    with open(path, "wb") as handle:
        handle.write(b"<p>Hello {{ subscriber.name or 'there' }}, the summer concerts are on.</p>")

    result = run_mailer(config_path, b"campaign", b"create", b"--list", b"news", b"--subject", b"Summer concerts",
                        b"--template", path)

    assert result.returncode == 0, result.stderr
    with database.session() as session:
        assert session.scalars(sa.select(Campaign.template_name)).all() == ["summer\\x85.html.j2"]


# any text with one lone surrogate somewhere, as Python decodes a byte that is not UTF-8
with_surrogate = st.tuples(
    st.text(max_size=30), st.integers(min_value=0xDC80, max_value=0xDCFF), st.text(max_size=30)
).map(lambda parts: f"{parts[0]}{chr(parts[1])}{parts[2]}")


@settings(max_examples=200)
@given(text=with_surrogate)
def test_no_check_of_stored_text_lets_a_lone_surrogate_through(text: str) -> None:
    with pytest.raises(InvalidInputError, match="not valid UTF-8"):
        check_unicode("the title", text)
    with pytest.raises(InvalidInputError):
        check_name(text)
    with pytest.raises(InvalidInputError):
        check_attribute_value("city", text)


@settings(max_examples=200)
@given(text=st.text(max_size=60))
def test_valid_text_passes_unchanged(text: str) -> None:
    assert check_unicode("the title", text) is text


def test_the_services_refuse_a_lone_surrogate_and_store_nothing(database: Database) -> None:
    before = stored(database)
    with database.session() as session, pytest.raises(InvalidInputError, match="the list title"):
        create_list(session, "news", title="T\udc85")
    with database.session() as session, pytest.raises(InvalidInputError, match="the reason"):
        suppress(session, "q2@example.com", SuppressionReason.MANUAL, "cli: R\udc85", AuditNote("cli:ana", "R\udc85"))
    with database.session() as session, pytest.raises(InvalidInputError, match="the reason"):
        insert_event(session, "erase", "cli:ana", subject="a@example.com", reason="R\udc85")
    assert stored(database) == before


def test_a_campaign_subject_with_a_lone_surrogate_is_refused_and_not_stored(
    cli: Cli, config: Config, database: Database
) -> None:
    cli("list", "create", "news")
    with database.session() as session, pytest.raises(InvalidInputError, match="the subject is not valid UTF-8"):
        create_campaign(session, config, list_name="news", subject="Sub\udc85ject", template="welcome")
    assert stored(database)["Campaign"] == 0


@pytest.fixture
def sqlite_database(sqlite_url: str) -> Iterator[Database]:
    # only SQLite's JSON text holds a lone surrogate (escaped); PostgreSQL's jsonb refuses it
    database = Database(sqlite_url)
    database.upgrade()
    yield database
    database.dispose()


def store_bad_attribute(database: Database, email: str) -> None:
    """A value stored before such text was refused, written past the checks as an old version did."""
    with database.session() as session:
        subscriber = session.scalar(sa.select(Subscriber).where(Subscriber.email_normalized == email))
        assert subscriber is not None
        subscriber.attributes = {"city": "C\udc85"}


def make_city_campaign(database: Database, list_id: int) -> int:
    campaign_id = make_campaign(database, list_id)
    with database.session() as session:
        campaign = session.get(Campaign, campaign_id)
        assert campaign is not None
        campaign.html_template = "<p>Hello {{ subscriber.name }} in {{ subscriber.attributes.city }}</p>"
    return campaign_id


def test_a_stored_bad_attribute_fails_only_its_own_message(
    tmp_path: Path, sqlite_database: Database, smtp_server: FaultyServer
) -> None:
    list_id = add_audience(sqlite_database, "news", ["ok@example.com", "odd@example.com"])
    with sqlite_database.session() as session:
        for subscriber in session.scalars(sa.select(Subscriber)):
            subscriber.attributes = {"city": "Paris"}
    store_bad_attribute(sqlite_database, "odd@example.com")
    campaign_id = make_city_campaign(sqlite_database, list_id)
    cli = Cli(write_config(tmp_path / "mailer.toml", sqlite_database.url, smtp_server))

    preview = cli("campaign", "preview", str(campaign_id), "--email", "odd@example.com", ok=False)
    assert preview.exit_code == 1
    assert "not valid UTF-8" in preview.stderr and preview.stderr.count("\n") == 1
    assert "Traceback" not in preview.output + preview.stderr

    # ok@ (first of its kind) passes the gate for both; the send fails odd@ alone
    cli("campaign", "send", str(campaign_id))
    assert [m.rcpt_tos for m in smtp_server.messages] == [["ok@example.com"]]
    rows = delivery_states(sqlite_database, campaign_id)
    assert rows["ok@example.com"].state is DeliveryState.SENT
    assert rows["odd@example.com"].state is DeliveryState.FAILED
    assert "not valid UTF-8" in (rows["odd@example.com"].last_response or "")


def test_campaign_check_names_the_subscriber_whose_stored_text_is_bad(
    tmp_path: Path, sqlite_database: Database, smtp_server: FaultyServer
) -> None:
    list_id = add_audience(sqlite_database, "news", ["odd@example.com"])
    store_bad_attribute(sqlite_database, "odd@example.com")
    campaign_id = make_city_campaign(sqlite_database, list_id)
    cli = Cli(write_config(tmp_path / "mailer.toml", sqlite_database.url, smtp_server))

    check = cli("campaign", "check", str(campaign_id), ok=False)

    assert check.exit_code == 1
    assert "odd@example.com" in check.output + check.stderr
    assert "not valid UTF-8" in check.output + check.stderr
    assert "Traceback" not in check.output + check.stderr
    refused = cli("campaign", "send", str(campaign_id), ok=False)
    assert refused.exit_code == 1 and "odd@example.com" in refused.stderr
    assert smtp_server.messages == []
