"""A PostgreSQL that goes away mid-send: its connections are killed from another connection
(pg_terminate_backend) for a few seconds while `campaign send`, `send-due` or `worker` sends."""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from sending_helpers import (
    add_audience,
    campaign_row,
    delivery_states,
    emails,
    make_campaign,
    sending_config,
)
from smtp_faults import FaultyServer

from mailer.db import Database
from mailer.models import CampaignStatus, DeliveryState, utcnow

N = 3000

pytestmark = pytest.mark.slow


@pytest.fixture
def named_url(postgres_url: str) -> str:
    """The test's schema, on connections named so that only this test's are killed."""
    return f"{postgres_url}&application_name=outage_{uuid.uuid4().hex[:12]}"


@contextmanager
def database_down(url: str) -> Iterator[None]:
    """Kill every connection of the mailer under test, again and again, until the block ends."""
    name = sa.engine.make_url(url).query["application_name"]
    admin = sa.create_engine(sa.engine.make_url(url).difference_update_query(["application_name", "options"]))
    stop = threading.Event()

    def kill() -> None:
        with admin.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            while not stop.is_set():
                conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                     "WHERE application_name = :name"), {"name": name})
                stop.wait(0.02)

    killer = threading.Thread(target=kill)
    killer.start()
    try:
        yield
    finally:
        stop.set()
        killer.join()
        admin.dispose()


def mailer(config: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "mailer", "--config", str(config), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(smtp_server: FaultyServer, count: int, proc: subprocess.Popen[str], limit: float = 120) -> None:
    end = time.monotonic() + limit
    while len(smtp_server.messages) < count:
        if proc.poll() is not None:
            raise AssertionError(f"sender exited early ({proc.returncode}): {proc.communicate()}")
        assert time.monotonic() < end, f"only {len(smtp_server.messages)} messages after {limit} s"
        time.sleep(0.01)


def prepare(tmp_path: Path, url: str, smtp_server: FaultyServer, reconnect_for: float = 60,
            **campaign: object) -> tuple[Database, Path, int]:
    database = Database(url)
    database.upgrade()
    campaign_id = make_campaign(database, add_audience(database, "news", emails(N)), **campaign)  # type: ignore[arg-type]
    config = sending_config(tmp_path / "mailer.toml", url, smtp_server, connections=2)
    text = config.read_text(encoding="utf-8")
    config.write_text(text.replace("[database]\n", f"[database]\nreconnect_for = {reconnect_for}\n", 1),
                      encoding="utf-8")
    return database, config, campaign_id


def start(command: str, config: Path, campaign_id: int) -> subprocess.Popen[str]:
    if command == "campaign send":
        return mailer(config, "campaign", "send", str(campaign_id))
    return mailer(config, command)


@pytest.mark.parametrize("command", ["campaign send", "send-due", "worker"])
def test_a_send_waits_out_a_database_outage_and_finishes_with_nothing_in_doubt(
    tmp_path: Path, named_url: str, smtp_server: FaultyServer, command: str
) -> None:
    due = {} if command == "campaign send" else {
        "status": CampaignStatus.SCHEDULED, "scheduled_at": utcnow() - dt.timedelta(seconds=1)}
    database, config, campaign_id = prepare(tmp_path, named_url, smtp_server, **due)
    proc = start(command, config, campaign_id)
    wait_for(smtp_server, 300, proc)

    with database_down(named_url):
        time.sleep(3)
    during = len(smtp_server.messages)
    assert during < N, "the send finished before the database came back"

    if command == "worker":
        wait_for(smtp_server, N, proc)
        proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)

    assert proc.returncode == 0, err
    if command == "campaign send":
        assert f"campaign {campaign_id}: {N} sent" in out
    assert "Traceback" not in err
    # one line when it goes, one when it is back (a connection that slipped between two kills
    # may make it two outages), and nothing else
    outages = err.count("database unavailable:")
    assert outages >= 1 and err.count("database reachable again") == outages, err
    said = [line for line in err.splitlines() if "database" in line]
    assert len(said) == 2 * outages, err
    received = smtp_server.handler.rcpt_counts
    assert len(received) == N and set(received.values()) == {1}, "somebody got it twice, or not at all"
    states = {d.state for d in delivery_states(database, campaign_id).values()}
    assert states == {DeliveryState.SENT}  # what the relay answered during the outage was recorded
    assert campaign_row(database, campaign_id).status is CampaignStatus.SENT
    database.dispose()


def test_a_database_gone_longer_than_reconnect_for_ends_the_send_with_the_counts(
    tmp_path: Path, named_url: str, smtp_server: FaultyServer
) -> None:
    database, config, campaign_id = prepare(tmp_path, named_url, smtp_server, reconnect_for=2)
    proc = mailer(config, "campaign", "send", str(campaign_id))
    wait_for(smtp_server, 300, proc)

    with database_down(named_url):
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError(f"still running with the database down: {proc.communicate()}") from None

    assert proc.returncode == 75, err  # EX_TEMPFAIL: a service manager tries again later
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"Error: campaign {campaign_id}: ") and " sent, " in last, err
    assert "database.reconnect_for" in last
    sent = int(last.split(": ")[2].split(" sent")[0])
    # the outage (twice if a connection slipped between two kills), then why it gave up: no more
    went, back = err.count("database unavailable:"), err.count("database reachable again")
    assert went == back + 1 and sum("database" in line for line in err.splitlines()) == went + back + 1, err
    # what the relay took was recorded as sent, or stays claimed (in doubt on the next run)
    received = smtp_server.handler.rcpt_counts
    assert sent == len(received) and set(received.values()) == {1}
    rows = delivery_states(database, campaign_id)
    recorded = {a for a, d in rows.items() if d.state is DeliveryState.SENT}
    unrecorded = {a for a, d in rows.items() if d.state is DeliveryState.SENDING}
    assert recorded <= set(received) <= recorded | unrecorded
    if unrecorded:
        assert f"{len(unrecorded)} deliveries claimed but not recorded will be in doubt" in last
    database.dispose()
