"""`mailer inbound serve --lmtp`: an MTA hands bounces, complaints and unsubscribes over LMTP."""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from cli_helpers import Cli, write_config
from inbound_helpers import World, delivery_row
from recipient_helpers import audit_events, statuses, suppressions

from mailer.db import Database, address_hash
from mailer.models import DeliveryState, SubscriptionStatus, SuppressionReason

RECIPIENTS = ["bounces@harmonymails.com", "unsubscribe@harmonymails.com"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Listener:
    port: int
    process: subprocess.Popen[str]
    output: str = ""  # what it printed, once stopped
    errors: str = ""


@contextmanager
def lmtp_listener(config: Path, workers: int = 0) -> Iterator[Listener]:
    """`mailer inbound serve --lmtp` as an MTA's admin starts it; stopped with SIGTERM, which must exit 0."""
    port = free_port()
    chosen = ["--workers", str(workers)] if workers else []
    process = subprocess.Popen(
        [sys.executable, "-m", "mailer", "--config", str(config), "inbound", "serve", "--lmtp",
         f"127.0.0.1:{port}", *chosen], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ)
    listener = Listener(port, process)
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first == f"listening for LMTP on 127.0.0.1:{port}\n", first
        yield listener
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            listener.output, listener.errors = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise
    assert process.returncode == 0, listener.errors


def deliver(port: int, raw: bytes, recipients: list[str] = RECIPIENTS) -> list[tuple[int, str]]:
    """One LMTP transaction; every reply after DATA, one per recipient (smtplib reads only the first)."""
    client = smtplib.LMTP("127.0.0.1", port, timeout=30)
    try:
        client.ehlo_or_helo_if_needed()
        client.mail("")
        for rcpt in recipients:
            assert client.rcpt(rcpt)[0] == 250
        replies = [client.data(raw)]
        replies += [client.getreply() for _ in recipients[1:]]
        return [(code, text.decode()) for code, text in replies]
    finally:
        client.quit()


def test_a_bounce_a_complaint_and_an_unsubscribe_are_acted_on_and_answered_per_recipient(
    world: World, config_path: Path
) -> None:
    with lmtp_listener(config_path) as server:
        bounce = deliver(server.port, world.fixture("postfix_hard_bounce"))
        unsubscribe = deliver(server.port, world.fixture("mailto_subject_token", person=world.bob))
        complaint = deliver(server.port, world.fixture("yahoo_complaint"))
    assert [code for code, _text in bounce + unsubscribe + complaint] == [250] * 6
    assert bounce[0][1].startswith("2.0.0 hard_bounce: delivery ")
    assert unsubscribe[1][1].startswith("2.0.0 unsubscribe: ")
    assert complaint[0][1].startswith("2.0.0 complaint: ana@example.net suppressed")
    assert delivery_row(world.database, world.delivery_id).state is DeliveryState.FAILED
    reasons = {entry.address_hash: entry.reason for entry in suppressions(world.database)}
    assert reasons[address_hash("ana@example.net")] is SuppressionReason.HARD_BOUNCE
    assert set(statuses(world.database, world.bob).values()) == {SubscriptionStatus.UNSUBSCRIBED}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_same_dsn_by_lmtp_twice_and_by_pipe_acts_once(world: World, config_path: Path, cli: Cli) -> None:
    raw = world.fixture("mailto_subject_token", person=world.bob)
    with lmtp_listener(config_path) as server:
        first = deliver(server.port, raw, RECIPIENTS[:1])
        again = deliver(server.port, raw, RECIPIENTS[:1])
    assert first[0][1].startswith("2.0.0 unsubscribe: ")
    assert again == [(250, "2.0.0 already_processed: acted on in an earlier run; nothing done")]
    piped = cli("inbound", "process", "-", input=raw.decode())
    assert "already processed: 1" in piped.output
    assert [event.subject for event in audit_events(world.database)] == ["bob@example.org"]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_mail_for_a_person_is_accepted_and_printed(world: World, config_path: Path) -> None:
    with lmtp_listener(config_path) as server:
        assert deliver(server.port, world.fixture("question"), RECIPIENTS[:1])[0][0] == 250
    assert "other <question-0001@example.com> from carla@example.com: not a bounce" in server.output


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_message_that_cannot_be_read_is_refused_for_good(world: World, config_path: Path) -> None:
    endless_head = b"".join(b"X-Padding-%d: %s\r\n" % (n, b"x" * 900) for n in range(400))
    with lmtp_listener(config_path) as server:
        replies = deliver(server.port, endless_head + b"\r\nbody\r\n")
    assert [code for code, _text in replies] == [554, 554]
    assert replies[0][1].startswith("5.6.0 headers longer than")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_451_while_the_database_is_unavailable_then_250_once_it_is_back(world: World, tmp_path: Path) -> None:
    later = tmp_path / "not-yet" / "mailer.db"
    config = write_config(tmp_path / "later.toml", f"sqlite:///{later}")
    raw = world.fixture("question")
    with lmtp_listener(config, workers=2) as server:
        assert deliver(server.port, raw) == [(451, "4.3.0 the database is unavailable, try again later")] * 2
        later.parent.mkdir()
        database = Database(f"sqlite:///{later}")
        database.upgrade()
        database.dispose()
        assert [code for code, _text in deliver(server.port, raw)] == [250, 250]
    [warning] = server.errors.splitlines()
    assert warning.startswith("Warning: the database is unavailable (")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("workers", [1, 3])
def test_sigterm_stops_the_listener_with_an_mta_still_connected(world: World, config_path: Path,
                                                                 workers: int) -> None:
    with lmtp_listener(config_path, workers) as server:
        idle = smtplib.LMTP("127.0.0.1", server.port, timeout=30)
        idle.ehlo_or_helo_if_needed()
        children = psutil.Process(server.process.pid).children()
        assert len(children) == (0 if workers == 1 else workers)
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=20) == 0
        assert time.monotonic() - started < 10
        _gone, alive = psutil.wait_procs(children, timeout=5)
        assert alive == []
        idle.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2).close()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_bad_address_is_one_line(cli: Cli) -> None:
    result = cli("inbound", "serve", "--lmtp", "2424", ok=False)
    assert result.exit_code == 2
    assert "must be HOST:PORT such as 127.0.0.1:2424; got '2424'" in result.stderr
