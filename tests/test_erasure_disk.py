"""An erasure leaves nothing of the person in the database files, with other processes connected."""

from __future__ import annotations

import http.client
import io
import itertools
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from cli_helpers import Cli, write_config
from hypothesis import given, settings
from hypothesis import strategies as st
from recipient_helpers import make_lists
from serve_helpers import free_port, start_serve, stop_serve

from mailer.config import Config, load_config
from mailer.db import Database, address_hash
from mailer.inbound.process import process_inbound
from mailer.models import (
    BounceEvent,
    BounceKind,
    Campaign,
    CampaignStatus,
    Delivery,
    DeliveryState,
    MailingList,
)
from mailer.privacy import ERASED_MARK, forget_subscriber
from mailer.recipients.lists import create_list
from mailer.recipients.subscribers import Consent, add_subscriber
from mailer.tokens import make_unsubscribe_token
from mailer.verp import make_return_path

FIXTURES = Path(__file__).parent / "fixtures" / "inbound"
ANA = "Ana.Lima@Example.com"
# what would identify Ana if it were found anywhere in the files
ANA_TRACES = ("ana.lima@example.com", "ana lima", "porto", "203.0.113.7", "198.51.100.77")


@pytest.fixture
def sqlite_database(sqlite_url: str) -> Iterator[Database]:
    db = Database(sqlite_url)
    db.upgrade()
    yield db
    db.dispose()


@pytest.fixture
def proxied_config_path(tmp_path: Path, sqlite_database: Database) -> Path:
    """A config for `mailer serve` behind nginx on this machine."""
    path = write_config(tmp_path / "mailer.toml", sqlite_database.url)
    path.write_text(path.read_text(encoding="utf-8").replace(
        "[unsubscribe]\n", "[unsubscribe]\ntrusted_proxies = 1\n"), encoding="utf-8")
    return path


def _files_bytes(database: Database) -> bytes:
    """mailer.db and mailer.db-wal as they are on disk now, lower-cased."""
    path = Path(sa.engine.make_url(database.url).database or "")
    wal = path.with_name(path.name + "-wal")
    return (path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")).lower()


def _add_people(database: Database) -> tuple[int, int]:
    """Ana (with a name, a city and a consent IP) and Bob; a campaign sent to Ana.

    Returns Ana's subscriber id and her delivery's id.
    """
    lists = make_lists(database, "news")
    with database.session() as session:
        ana, _ = add_subscriber(session, ANA, "news", Consent(source="test", ip="203.0.113.7"),
                                name="Ana Lima", attributes={"city": "Porto"})
        add_subscriber(session, "bob@example.org", "news", Consent(source="test", ip="192.0.2.44"),
                       name="Bob Stone", attributes={"city": "Oslo"})
        assert ana is not None
        campaign = Campaign(list_id=lists["news"], subject="Our autumn collection is here",
                            from_address="news@harmonymails.com",
                            html_template="<html><body>Hi</body></html>", status=CampaignStatus.SENT)
        session.add(campaign)
        session.flush()
        delivery = Delivery(campaign_id=campaign.id, subscriber_id=ana.id, state=DeliveryState.SENT,
                            attempts=1, last_code=250, last_response="250 2.0.0 Ok: queued for Ana Lima")
        session.add(delivery)
        session.flush()
        return ana.id, delivery.id


def _bounce_naming_ana(config: Config, ana_id: int, delivery_id: int) -> bytes:
    """A real Postfix bounce whose remote server quotes Ana's address and name."""
    text = (FIXTURES / "postfix_hard_bounce.eml").read_text(encoding="utf-8")
    token = make_unsubscribe_token(config.require_secret_keys(), ana_id, None, None)
    text = (text.replace("{{VERP}}", make_return_path(config, delivery_id)).replace("{{RCPT}}", ANA)
                .replace("{{TOKEN}}", token)
                .replace("Recipient address rejected: User\n    unknown",
                         "Recipient address rejected: Ana Lima\n    has left the company"))
    assert "{{" not in text
    return text.encode("utf-8")


def _one_click_through_proxy(port: int, token: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("POST", f"/u/{token}", body=b"List-Unsubscribe=One-Click",
                       headers={"Content-Type": "application/x-www-form-urlencoded",
                                "X-Forwarded-For": "198.51.100.77", "X-Forwarded-Proto": "https"})
    status = connection.getresponse().status
    connection.close()
    return status


def test_forget_while_mailer_serve_runs_leaves_nothing_of_the_person_in_the_files(
    sqlite_database: Database, proxied_config_path: Path
) -> None:
    config = load_config(proxied_config_path, environ={})
    ana_id, delivery_id = _add_people(sqlite_database)
    process_inbound(sqlite_database, config, io.BytesIO(_bounce_naming_ana(config, ana_id, delivery_id)))
    port = free_port()
    server = start_serve(proxied_config_path, port)
    try:
        # mailer serve writes the opt-out, with the recipient's IP, into the WAL it keeps open
        token = make_unsubscribe_token(config.require_secret_keys(), ana_id, None, None)
        assert _one_click_through_proxy(port, token) == 200
        before = _files_bytes(sqlite_database)
        assert all(trace.encode() in before for trace in ANA_TRACES)

        out = Cli(proxied_config_path)("subscriber", "forget", ANA, "--yes")

        # read while mailer serve still holds the database open: nothing waits for it to stop
        after = _files_bytes(sqlite_database)
    finally:
        stop_serve(server)
    assert "old copies overwritten in the database files" in out.stdout
    assert out.stderr == ""
    assert [trace for trace in ANA_TRACES if trace.encode() in after] == []
    # the files were read for real: the person who was not erased is all there
    assert all(trace in after for trace in (b"bob@example.org", b"bob stone", b"oslo", b"192.0.2.44"))
    with sqlite_database.session() as session:
        (bounce,) = session.scalars(sa.select(BounceEvent)).all()
        # the bounce still counts for the hashed address; the server's words no longer name her
        assert bounce.address_hash == address_hash(ANA)
        assert "has left the company" in bounce.diagnostic and "ana" not in bounce.diagnostic.lower()


_READER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN")
conn.execute("SELECT count(*) FROM subscribers").fetchone()
print("reading", flush=True)
sys.stdin.read()
conn.execute("COMMIT")
"""


def test_forget_says_in_one_line_when_a_reader_keeps_old_copies_on_disk(
    sqlite_database: Database, proxied_config_path: Path
) -> None:
    _add_people(sqlite_database)
    path = sa.engine.make_url(sqlite_database.url).database or ""
    # a report or a backup script in the middle of a long read
    reader = subprocess.Popen([sys.executable, "-c", _READER, path], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout is not None and reader.stdout.readline() == "reading\n"
        started = time.monotonic()
        result = Cli(proxied_config_path)("subscriber", "forget", ANA, "--yes")
        took = time.monotonic() - started
    finally:
        reader.communicate(input="", timeout=10)
    assert "old copies overwritten" not in result.stdout
    assert result.stderr == (
        "warning: not yet gone from the disk: another process holds a read transaction open on the "
        f"database, so old copies of the erased rows stay in {path}-wal until every process using "
        "the database has closed it\n")
    assert took < 10  # a few short retries, not SQLite's 30-second busy wait
    # the erasure itself stands
    gone = Cli(proxied_config_path)("subscriber", "show", ANA, ok=False)
    assert gone.stderr == f"Error: no subscriber with address {ANA!r}\n"


def test_export_after_an_address_change_lists_the_earlier_address_bounce_and_forget_removes_it(
    cli: Cli, database: Database
) -> None:
    cli("list", "create", "news")
    cli("subscriber", "add", "ana@exmaple.com", "--list", "news", "--name", "Ana Lima")
    with database.session() as session:
        # matched by address only (a bounce that quoted no delivery), before the typo was corrected
        session.add(BounceEvent(kind=BounceKind.SOFT, address_hash=address_hash("ana@exmaple.com"),
                                status="4.2.2", diagnostic="452 4.2.2 <ANA@exmaple.com> (Ana Lima) over quota"))
    cli("subscriber", "update", "ana@exmaple.com", "--email", "ana@example.com")

    shown = json.loads(cli("subscriber", "export", "ana@example.com").stdout)
    assert [b["diagnostic"] for b in shown["bounces"]] == ["452 4.2.2 <ANA@exmaple.com> (Ana Lima) over quota"]

    erased = cli("subscriber", "forget", "ana@example.com", "--yes")

    # SQLite truncates its WAL; PostgreSQL's VACUUM cannot run in the erasure's transaction, and does
    assert ("old copies overwritten in the database files" if database.is_sqlite
            else "deleted rows vacuumed from the tables") in erased.stdout
    assert erased.stderr == ""
    # what the export showed is what the erasure reached: the bounce stays, counted, naming no one
    left = json.loads(cli("subscriber", "export", "ana@example.com").stdout)
    assert [b["diagnostic"] for b in left["bounces"]] == ["452 4.2.2 <[erased]> ([erased]) over quota"]
    with database.session() as session:
        diagnostics = session.scalars(sa.select(BounceEvent.diagnostic)).all()
    assert diagnostics == ["452 4.2.2 <[erased]> ([erased]) over quota"]


_SEQUENCE = itertools.count()  # an address drawn twice would be erased already
_NAME_WORD = st.text(st.characters(categories=["L"]), min_size=1, max_size=12)


@settings(max_examples=40)
@given(words=st.lists(_NAME_WORD, min_size=1, max_size=3),
       # a dot-atom: dots only between other characters, never two in a row (RFC 5322)
       local=st.from_regex(r"[a-z][a-z0-9]{0,7}(\.[a-z0-9]{1,7})?", fullmatch=True),
       flips=st.lists(st.booleans(), min_size=1, max_size=40))
def test_forget_scrubs_any_name_and_any_spelling_of_the_address_from_diagnostics(
    sqlite_database: Database, words: list[str], local: str, flips: list[bool]
) -> None:
    name = " ".join(words)
    address = f"{local}.{next(_SEQUENCE)}@example.net"
    # the receiving server quotes the address in its own case
    quoted = "".join(c.upper() if flip else c for c, flip in zip(address, itertools.cycle(flips)))
    with sqlite_database.session() as session:
        if session.scalar(sa.select(MailingList.id).where(MailingList.name == "news")) is None:
            create_list(session, "news")
        person, _ = add_subscriber(session, address, "news", Consent(source="test"), name=name)
        assert person is not None
        session.add(BounceEvent(kind=BounceKind.SOFT, address_hash=address_hash(address), status="5.1.1",
                                diagnostic=f"550 5.1.1 <{quoted}> ({name}); {name} 550"))
    with sqlite_database.session() as session:
        forget_subscriber(session, address, "test")
    with sqlite_database.session() as session:
        (diagnostic,) = session.scalars(sa.select(BounceEvent.diagnostic).where(
            BounceEvent.address_hash == address_hash(address))).all()
    assert address not in diagnostic.lower()
    # a one-letter name is in "[erased]" itself; what matters is that no word of the text is the name
    assert re.search(rf"(?<!\w){re.escape(name)}(?!\w)", diagnostic.replace(ERASED_MARK, "")) is None
    assert diagnostic.startswith("550 5.1.1 <[erased]> (") and diagnostic.endswith(" 550")
