"""Scheduling and cron: `campaign schedule`, `send-due`, missed schedules, `worker`."""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import subprocess
import sys
import time
from pathlib import Path

from cli_helpers import Cli
from sending_helpers import (
    add_audience,
    campaign_row,
    emails,
    make_campaign,
    sending_config,
    state_counts,
)
from smtp_faults import FaultyServer

from mailer.config import load_config
from mailer.db import Database
from mailer.delivery.due import send_due
from mailer.models import CampaignStatus, DeliveryState, utcnow


def test_a_scheduled_campaign_goes_out_when_its_time_comes(
    tmp_path: Path, database: Database, smtp_server: FaultyServer
) -> None:
    list_id = add_audience(database, "news", emails(5))
    campaign_id = make_campaign(database, list_id)
    path = sending_config(tmp_path / "mailer.toml", database.url, smtp_server)
    cli = Cli(path)
    at = (utcnow() + dt.timedelta(hours=2)).replace(microsecond=0)

    result = cli("campaign", "schedule", str(campaign_id), "--at", at.isoformat())

    assert f"scheduled for {at.isoformat()}" in result.output
    assert "status: scheduled" in cli("campaign", "status", str(campaign_id)).output
    assert cli("send-due").output == ""  # not yet
    assert smtp_server.messages == []

    config = load_config(path, environ={})
    report = asyncio.run(send_due(config, database, clock=lambda: at + dt.timedelta(seconds=30)))

    assert report.started == [campaign_id]
    assert len(smtp_server.handler.rcpt_counts) == 5
    assert campaign_row(database, campaign_id).status is CampaignStatus.SENT


def test_send_due_cli_sends_a_due_campaign(tmp_path: Path, database: Database, smtp_server: FaultyServer) -> None:
    list_id = add_audience(database, "news", emails(3))
    campaign_id = make_campaign(database, list_id, status=CampaignStatus.SCHEDULED,
                                scheduled_at=utcnow() - dt.timedelta(minutes=1))
    cli = Cli(sending_config(tmp_path / "mailer.toml", database.url, smtp_server))

    result = cli("send-due")

    assert f"campaign {campaign_id} started" in result.output
    assert f"campaign {campaign_id}: 3 sent" in result.output
    assert len(smtp_server.messages) == 3
    assert cli("send-due").output == ""  # a second run finds nothing to do
    assert len(smtp_server.messages) == 3


def test_a_campaign_past_max_lateness_is_marked_missed_and_not_sent(
    tmp_path: Path, database: Database, smtp_server: FaultyServer
) -> None:
    list_id = add_audience(database, "news", emails(3))
    campaign_id = make_campaign(database, list_id, status=CampaignStatus.SCHEDULED,
                                scheduled_at=utcnow() - dt.timedelta(days=2))
    cli = Cli(sending_config(tmp_path / "mailer.toml", database.url, smtp_server))

    result = cli("send-due")

    assert f"campaign {campaign_id} missed" in result.output
    campaign = campaign_row(database, campaign_id)
    assert campaign.status is CampaignStatus.MISSED
    assert "max_lateness" in campaign.status_reason
    assert state_counts(database, campaign_id) == {}
    assert smtp_server.messages == []
    assert cli("send-due").output == ""  # reported once
    # the marketer may still choose to send it at a new time
    later = (utcnow() + dt.timedelta(hours=1)).isoformat()
    assert "scheduled for" in cli("campaign", "schedule", str(campaign_id), "--at", later).output


def test_schedule_refuses_the_past_and_takes_a_time_without_offset_as_local(
    tmp_path: Path, database: Database, smtp_server: FaultyServer
) -> None:
    list_id = add_audience(database, "news", emails(1))
    campaign_id = make_campaign(database, list_id)
    cli = Cli(sending_config(tmp_path / "mailer.toml", database.url, smtp_server))

    past = cli("campaign", "schedule", str(campaign_id), "--at", "2020-01-01T09:00:00+00:00", ok=False)
    assert past.exit_code == 1 and "in the past" in past.stderr
    bad = cli("campaign", "schedule", str(campaign_id), "--at", "next tuesday", ok=False)
    assert bad.exit_code == 2 and "ISO-8601" in bad.stderr

    cli("campaign", "schedule", str(campaign_id), "--at", "2099-01-01T09:00")

    expected = dt.datetime(2099, 1, 1, 9, 0).astimezone().astimezone(dt.UTC)
    assert campaign_row(database, campaign_id).scheduled_at == expected


def test_schedule_runs_the_compliance_gate(tmp_path: Path, database: Database, smtp_server: FaultyServer) -> None:
    list_id = add_audience(database, "news", emails(1))
    campaign_id = make_campaign(database, list_id, subject="RE: YOUR ORDER")
    cli = Cli(sending_config(tmp_path / "mailer.toml", database.url, smtp_server))
    later = (utcnow() + dt.timedelta(hours=1)).isoformat()

    result = cli("campaign", "schedule", str(campaign_id), "--at", later, ok=False)

    assert result.exit_code == 1
    assert campaign_row(database, campaign_id).status is CampaignStatus.DRAFT


def test_send_due_max_seconds_bounds_a_run(tmp_path: Path, database: Database, smtp_server: FaultyServer) -> None:
    list_id = add_audience(database, "news", emails(400))
    campaign_id = make_campaign(database, list_id, status=CampaignStatus.SCHEDULED,
                                scheduled_at=utcnow() - dt.timedelta(minutes=1))
    cli = Cli(sending_config(tmp_path / "mailer.toml", database.url, smtp_server, rate=100, batch_size=20))

    started = time.monotonic()
    result = cli("send-due", "--max-seconds", "1")
    elapsed = time.monotonic() - started

    # 400 messages at 100/s take 4 s: a run bounded to 1 s stops early, whatever the machine's load
    assert elapsed < 3.5
    assert "stopped early" in result.output
    counts = state_counts(database, campaign_id)
    assert 0 < counts[DeliveryState.SENT] < 400
    assert counts[DeliveryState.SENT] + counts[DeliveryState.PENDING] == 400
    cli("send-due")
    assert len(smtp_server.handler.rcpt_counts) == 400 and set(smtp_server.handler.rcpt_counts.values()) == {1}


def test_worker_sends_what_becomes_due_and_stops_on_sigterm(
    tmp_path: Path, database: Database, smtp_server: FaultyServer
) -> None:
    list_id = add_audience(database, "news", emails(30))
    config = sending_config(tmp_path / "mailer.toml", database.url, smtp_server)
    worker = subprocess.Popen(
        [sys.executable, "-m", "mailer", "--config", str(config), "worker", "--poll-seconds", "0.2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        time.sleep(1)
        make_campaign(database, list_id, status=CampaignStatus.SCHEDULED,
                      scheduled_at=utcnow() - dt.timedelta(seconds=1))
        end = time.monotonic() + 30
        while len(smtp_server.messages) < 30 and time.monotonic() < end:
            time.sleep(0.05)
    finally:
        worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate(timeout=30)

    assert worker.returncode == 0, err
    assert "event=worker_stopped" in err
    assert "30 sent" in out
    assert len(smtp_server.handler.rcpt_counts) == 30 and set(smtp_server.handler.rcpt_counts.values()) == {1}
