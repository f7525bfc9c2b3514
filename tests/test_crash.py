"""Crash safety with real processes: SIGKILL and SIGTERM mid-send, and overlapping send-due runs."""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
import sys
import time
from pathlib import Path

import sqlalchemy as sa
from cli_helpers import Cli
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
from mailer.models import CampaignStatus, DeliveryState, Subscriber, utcnow

BATCH = 100
CONNECTIONS = 2


def mailer(config: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "mailer", "--config", str(config), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait_for_messages(smtp_server: FaultyServer, count: int, proc: subprocess.Popen[str], limit: float = 60) -> None:
    end = time.monotonic() + limit
    while len(smtp_server.messages) < count:
        if proc.poll() is not None:
            raise AssertionError(f"sender exited early ({proc.returncode}): {proc.communicate()}")
        if time.monotonic() > end:
            proc.kill()
            proc.communicate()
            raise AssertionError(f"only {len(smtp_server.messages)} messages after {limit} s")
        time.sleep(0.01)


def prepare(tmp_path: Path, database: Database, smtp_server: FaultyServer, n: int, batch: int = BATCH,
            **campaign: object) -> tuple[Path, int]:
    list_id = add_audience(database, "news", emails(n))
    campaign_id = make_campaign(database, list_id, **campaign)  # type: ignore[arg-type]
    config = sending_config(tmp_path / "mailer.toml", database.url, smtp_server, connections=CONNECTIONS,
                            batch_size=batch)
    return config, campaign_id


def test_sigkill_mid_send_then_resume_sends_nobody_twice(
    tmp_path: Path, sqlite_url: str, smtp_server: FaultyServer
) -> None:
    database = Database(sqlite_url)
    database.upgrade()
    config, campaign_id = prepare(tmp_path, database, smtp_server, 5000)
    proc = mailer(config, "campaign", "send", str(campaign_id))
    wait_for_messages(smtp_server, 1000, proc)
    # the rate at the moment of the kill: over the last second, as the sender itself measures it
    before, started = len(smtp_server.messages), time.monotonic()
    time.sleep(1)
    rate = (len(smtp_server.messages) - before) / (time.monotonic() - started)

    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)  # its pipes close only when its render helper has gone too
    killed_at = len(smtp_server.messages)
    assert killed_at < 5000, "the send finished before it could be killed"
    assert campaign_row(database, campaign_id).status is CampaignStatus.SENDING

    resumed = Cli(config)("campaign", "send", str(campaign_id))

    received = smtp_server.handler.rcpt_counts
    assert max(received.values()) == 1, "somebody got the campaign twice"
    rows = delivery_states(database, campaign_id)
    in_doubt = {a for a, d in rows.items() if d.state is DeliveryState.IN_DOUBT}
    sent = {a for a, d in rows.items() if d.state is DeliveryState.SENT}
    assert sent | in_doubt == set(rows) and len(rows) == 5000
    assert sent <= set(received)  # everything recorded as sent did arrive ...
    assert set(emails(5000)) - set(received) <= in_doubt  # ... and whatever did not is in doubt
    # only what was on the wire, queued just ahead of it, or answered in the last moment: not the
    # whole batch of 100, which would send ~that many people the campaign twice on a retry
    assert len(in_doubt) <= max(2 * CONNECTIONS, 0.1 * rate), f"{len(in_doubt)} in doubt at {rate:.0f} msg/s"
    assert campaign_row(database, campaign_id).status is CampaignStatus.SENT
    if in_doubt:
        assert f"{len(in_doubt)} in doubt" in resumed.output
    database.dispose()


def test_sigterm_drains_in_flight_messages_and_leaves_none_in_doubt(
    tmp_path: Path, sqlite_url: str, smtp_server: FaultyServer
) -> None:
    database = Database(sqlite_url)
    database.upgrade()
    config, campaign_id = prepare(tmp_path, database, smtp_server, 5000)
    proc = mailer(config, "campaign", "send", str(campaign_id))
    wait_for_messages(smtp_server, 1000, proc)

    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)

    assert proc.returncode == 0, err
    assert "stopped early" in out
    rows = delivery_states(database, campaign_id)
    states = {d.state for d in rows.values()}
    assert states == {DeliveryState.SENT, DeliveryState.PENDING}  # nothing in doubt, nothing claimed
    sent = {a for a, d in rows.items() if d.state is DeliveryState.SENT}
    assert sent == set(smtp_server.handler.rcpt_counts)  # every message handed over was recorded

    Cli(config)("campaign", "send", str(campaign_id))

    received = smtp_server.handler.rcpt_counts
    assert len(received) == 5000 and set(received.values()) == {1}
    assert campaign_row(database, campaign_id).status is CampaignStatus.SENT
    database.dispose()


def test_two_send_due_runs_started_together_send_each_recipient_once(
    tmp_path: Path, database: Database, smtp_server: FaultyServer
) -> None:
    config, campaign_id = prepare(
        tmp_path, database, smtp_server, 3000, batch=50,
        status=CampaignStatus.SCHEDULED, scheduled_at=utcnow() - dt.timedelta(seconds=1),
    )
    first = mailer(config, "send-due")
    second = mailer(config, "send-due")
    outputs = [p.communicate(timeout=120) for p in (first, second)]

    assert [p.returncode for p in (first, second)] == [0, 0], outputs
    received = smtp_server.handler.rcpt_counts
    assert len(received) == 3000 and set(received.values()) == {1}
    assert {d.state for d in delivery_states(database, campaign_id).values()} == {DeliveryState.SENT}
    assert campaign_row(database, campaign_id).status is CampaignStatus.SENT
    # both runs took a share of the work, and only the one that started the campaign says so
    assert all(f"campaign {campaign_id}: " in out for out, _ in outputs), outputs
    assert sum(f"campaign {campaign_id} started" in out for out, _ in outputs) == 1, outputs


def test_a_send_with_a_large_batch_and_render_helper_does_not_hang(
    tmp_path: Path, sqlite_url: str, smtp_server: FaultyServer
) -> None:
    # thousands of recipients claimed at once are handed to the render helper in many jobs; if
    # the sender wrote them all before reading any answer, the sender and the helper each waited
    # for the other to read, and the send hung where not even SIGTERM could stop it
    database = Database(sqlite_url)
    database.upgrade()
    config, campaign_id = prepare(tmp_path, database, smtp_server, 2000, batch=2000)
    with database.session() as session:
        session.execute(sa.update(Subscriber).values(attributes={"note": "x" * 2000}))
    proc = mailer(config, "campaign", "send", str(campaign_id))
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError(f"the send hung after {len(smtp_server.messages)} of 2000 messages") from None

    assert proc.returncode == 0, err
    assert "2000 sent" in out
    received = smtp_server.handler.rcpt_counts
    assert len(received) == 2000 and set(received.values()) == {1}
    database.dispose()


def test_a_dead_senders_claims_are_in_doubt_even_when_its_pid_now_belongs_to_another_process(
    tmp_path: Path, database: Database, smtp_server: FaultyServer
) -> None:
    # after a crash (or a power cut and a reboot) the dead sender's pid may go to any process;
    # that process must not keep the claims alive, or the campaign never finishes
    config, campaign_id = prepare(tmp_path, database, smtp_server, 10)
    Cli(config)("campaign", "send", str(campaign_id))  # gone out; now pretend 3 were in flight
    dead = subprocess.run(
        [sys.executable, "-c", "from mailer.delivery.senders import make_worker_id; print(make_worker_id())"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    newcomer = subprocess.Popen(["sleep", "60"])
    try:
        host, _, rest = dead.partition(":")
        claimer = f"{host}:{newcomer.pid}:{rest.partition(':')[2]}".rstrip(":")
        with database.session() as session:
            session.execute(sa.text(
                "UPDATE deliveries SET state = 'sending', claimed_by = :claimer, claimed_at = :now "
                "WHERE id IN (SELECT id FROM deliveries ORDER BY id LIMIT 3)"
            ), {"claimer": claimer, "now": utcnow()})
            session.execute(sa.text("UPDATE campaigns SET status = 'sending'"))

        result = Cli(config)("send-due")
    finally:
        newcomer.kill()
        newcomer.wait()

    assert "3 deliveries of a stopped sender set aside as in doubt" in result.output
    states = [d.state for d in delivery_states(database, campaign_id).values()]
    assert sorted(states) == [DeliveryState.IN_DOUBT] * 3 + [DeliveryState.SENT] * 7
    assert campaign_row(database, campaign_id).status is CampaignStatus.SENT
