"""`mailer inbound serve --lmtp`: an MTA hands bounces, complaints and unsubscribes over LMTP."""

from __future__ import annotations

import os
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
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
from mailer.verp import make_return_path

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
def test_a_message_over_10_mib_is_refused_once_per_recipient(world: World, config_path: Path) -> None:
    huge = b"Subject: big\r\n\r\n" + b"x" * 998 + b"\r\n"
    huge *= 11 * 1024 * 1024 // len(huge)
    with lmtp_listener(config_path) as server:
        assert [code for code, _text in deliver(server.port, huge)] == [552, 552]
        # and the listener goes on taking mail
        assert [code for code, _text in deliver(server.port, world.fixture("question"))] == [250, 250]


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


POSTFIX = Path("/usr/sbin/postfix")
_POSTFIX_MAIN = """\
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
mail_owner = postfix
myhostname = mx.test.invalid
mydestination =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relay_domains = bounces.harmonymails.com
relay_transport = lmtp:inet:127.0.0.1:{lmtp_port}
maillog_file_prefixes = {root}
maillog_file = {root}/maillog
alias_maps =
alias_database =
smtp_dns_support_level = disabled
lmtp_host_lookup = native
"""
_POSTFIX_SERVICES = ["pickup unix n - n 60 1 pickup", "cleanup unix n - n - 0 cleanup",
                     "qmgr unix n - n 300 1 qmgr", "rewrite unix - - n - - trivial-rewrite",
                     "bounce unix - - n - 0 bounce", "defer unix - - n - 0 bounce", "trace unix - - n - 0 bounce",
                     "verify unix - - n - 1 verify", "flush unix n - n 1000 0 flush",
                     "proxymap unix - - n - - proxymap", "smtp unix - - n - - smtp", "relay unix - - n - - smtp",
                     "showq unix n - n - - showq", "error unix - - n - - error", "retry unix - - n - - error",
                     "discard unix - - n - - discard", "lmtp unix - - n - - lmtp", "anvil unix - - n - 1 anvil",
                     "scache unix - - n - 1 scache", "postlog unix-dgram n - n - 1 postlogd"]


@contextmanager
def throwaway_postfix(lmtp_port: int) -> Iterator[tuple[int, Path]]:
    """A Postfix of its own on loopback relaying the bounce domain over LMTP; its SMTP port and log."""
    root = Path(tempfile.mkdtemp(prefix="postfix-test-"))
    os.chmod(root, 0o755)
    for sub in ("conf", "queue", "data"):
        (root / sub).mkdir()
    shutil.chown(root / "data", "postfix")
    smtp_port = free_port()
    (root / "conf" / "main.cf").write_text(_POSTFIX_MAIN.format(root=root, lmtp_port=lmtp_port))
    (root / "conf" / "master.cf").write_text(
        "\n".join([f"127.0.0.1:{smtp_port} inet n - n - - smtpd", *_POSTFIX_SERVICES]) + "\n")
    conf = str(root / "conf")
    process = subprocess.Popen([str(POSTFIX), "-c", conf, "start-fg"], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", smtp_port), timeout=1).close()
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, "postfix did not start"
                time.sleep(0.2)
        yield smtp_port, root / "maillog"
    finally:
        subprocess.run([str(POSTFIX), "-c", conf, "stop"], capture_output=True, timeout=60)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_real_postfix_hands_a_bounce_over_lmtp(world: World, config_path: Path) -> None:
    if not POSTFIX.exists() or os.getuid() != 0:
        pytest.skip("needs Debian's postfix and root to start a throwaway instance (CI has both)")
    raw = world.fixture("postfix_hard_bounce")
    verp = make_return_path(world.config, world.delivery_id)
    with lmtp_listener(config_path) as server, throwaway_postfix(server.port) as (smtp_port, maillog):
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as client:
            client.sendmail("", [verp, "unsubscribe@bounces.harmonymails.com"], raw)
        deadline = time.monotonic() + 60
        while maillog.read_text().count("status=sent") < 2:
            assert time.monotonic() < deadline, maillog.read_text()
            time.sleep(0.2)
        log = maillog.read_text()
    assert delivery_row(world.database, world.delivery_id).state is DeliveryState.FAILED
    # one LMTP transaction, and Postfix read a reply for each of its recipients
    sent = [line for line in log.splitlines() if "status=sent" in line]
    assert [line.split(" to=<")[1].split(">")[0] for line in sent] == [verp, "unsubscribe@bounces.harmonymails.com"]
    assert all(f"relay=127.0.0.1[127.0.0.1]:{server.port}" in line for line in sent)
    assert all("status=sent (250 2.0.0 hard_bounce: delivery" in line for line in sent)
