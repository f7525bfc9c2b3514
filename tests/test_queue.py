"""Handing a campaign to the workers (`campaign send --queue`, `schedule --at now`) and following it
(`campaign status --watch`)."""

from __future__ import annotations

import datetime as dt
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from cli_helpers import Cli
from sending_helpers import add_audience, campaign_row, emails, make_campaign, sending_config
from smtp_faults import FaultyServer

from mailer.db import Database
from mailer.models import CampaignStatus, utcnow


def mailer(config: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "mailer", "--config", str(config), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_send_queue_returns_at_once_and_the_next_send_due_sends_it(
    tmp_path: Path, database: Database, smtp_server: FaultyServer
) -> None:
    campaign_id = make_campaign(database, add_audience(database, "news", emails(5)))
    cli = Cli(sending_config(tmp_path / "mailer.toml", database.url, smtp_server))
    before = utcnow()

    queued = cli("campaign", "send", str(campaign_id), "--queue")

    assert "queued" in queued.stdout and f"campaign status {campaign_id} --watch" in queued.stdout
    assert smtp_server.messages == []  # handed over, not sent here
    campaign = campaign_row(database, campaign_id)
    assert campaign.status is CampaignStatus.SCHEDULED
    assert campaign.scheduled_at is not None and before <= campaign.scheduled_at <= utcnow()
    events = json.loads(cli("audit", "ls", "--json").stdout)
    assert [(e["action"], e["subject"], e["reason"]) for e in events] == [
        ("campaign_scheduled", f"campaign {campaign_id}", "due now, for the workers")]
    assert events[0]["actor"].startswith("cli")

    cli("send-due")

    assert len(smtp_server.handler.rcpt_counts) == 5
    watched = cli("campaign", "status", str(campaign_id), "--watch")
    assert "status: sent (5 sent)" in watched.stdout


def test_schedule_at_now_is_due_at_once_while_a_past_time_is_still_refused(
    tmp_path: Path, database: Database, smtp_server: FaultyServer
) -> None:
    campaign_id = make_campaign(database, add_audience(database, "news", emails(2)))
    cli = Cli(sending_config(tmp_path / "mailer.toml", database.url, smtp_server))
    past = (utcnow() - dt.timedelta(seconds=5)).isoformat()

    refused = cli("campaign", "schedule", str(campaign_id), "--at", past, ok=False)
    assert refused.exit_code == 1 and "in the past" in refused.stderr

    cli("campaign", "schedule", str(campaign_id), "--at", "now")
    assert f"campaign {campaign_id}: 2 sent" in cli("send-due").stdout
    assert campaign_row(database, campaign_id).status is CampaignStatus.SENT


def test_queue_runs_the_gate_and_refuses_what_a_send_would_refuse(
    tmp_path: Path, database: Database, smtp_server: FaultyServer
) -> None:
    list_id = add_audience(database, "news", emails(2))
    misleading = make_campaign(database, list_id, subject="RE: YOUR ORDER")
    paused = make_campaign(database, list_id, status=CampaignStatus.PAUSED, status_reason="wrong price")
    sending = make_campaign(database, list_id, status=CampaignStatus.SENDING)
    cli = Cli(sending_config(tmp_path / "mailer.toml", database.url, smtp_server))

    gate = cli("campaign", "send", str(misleading), "--queue", ok=False)
    assert gate.exit_code == 1 and campaign_row(database, misleading).status is CampaignStatus.DRAFT
    refused = cli("campaign", "send", str(paused), "--queue", ok=False)
    assert refused.exit_code == 1 and f"mailer campaign resume {paused}" in refused.stderr
    assert campaign_row(database, paused).status is CampaignStatus.PAUSED
    going_on = cli("campaign", "send", str(sending), "--queue")
    assert "already sending" in going_on.stdout
    assert campaign_row(database, sending).status is CampaignStatus.SENDING
    assert json.loads(cli("audit", "ls", "--json").stdout) == []


def test_watch_follows_a_queued_campaign_until_a_worker_has_sent_it(
    tmp_path: Path, database: Database, smtp_server: FaultyServer
) -> None:
    campaign_id = make_campaign(database, add_audience(database, "news", emails(60)))
    config = sending_config(tmp_path / "mailer.toml", database.url, smtp_server, rate=20, batch_size=10)
    Cli(config)("campaign", "send", str(campaign_id), "--queue")
    watch = mailer(config, "campaign", "status", str(campaign_id), "--watch")
    assert watch.stdout is not None
    first = [watch.stdout.readline(), watch.stdout.readline()]  # before any worker runs
    worker = mailer(config, "worker", "--poll-seconds", "0.2")
    try:
        rest, err = watch.communicate(timeout=90)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=30)

    assert watch.returncode == 0, err
    assert first[1].startswith("scheduled: 0 of 0 done (waiting for a worker")
    out = "".join(first) + rest
    lines = out.splitlines()
    progress = [line for line in lines if line.startswith("sending: ")]
    assert any(0 < int(line.split()[1]) < 60 for line in progress), out  # seen part way
    assert "status: sent (60 sent)" in out
    assert len(smtp_server.handler.rcpt_counts) == 60


def test_ctrl_c_stops_watching_not_sending(tmp_path: Path, database: Database, smtp_server: FaultyServer) -> None:
    campaign_id = make_campaign(database, add_audience(database, "news", emails(2)))
    config = sending_config(tmp_path / "mailer.toml", database.url, smtp_server)
    Cli(config)("campaign", "send", str(campaign_id), "--queue")
    watch = mailer(config, "campaign", "status", str(campaign_id), "--watch")
    assert watch.stdout is not None
    assert watch.stdout.readline().startswith(f"campaign {campaign_id} ")
    time.sleep(0.5)

    watch.send_signal(signal.SIGINT)
    _, err = watch.communicate(timeout=30)

    assert watch.returncode == 130
    assert "stopped watching" in err and "Traceback" not in err
    assert campaign_row(database, campaign_id).status is CampaignStatus.SCHEDULED
    Cli(config)("send-due")
    assert len(smtp_server.messages) == 2


def test_watch_of_a_paused_campaign_ends_at_once_with_status_1(
    tmp_path: Path, database: Database, smtp_server: FaultyServer
) -> None:
    campaign_id = make_campaign(database, None, status=CampaignStatus.PAUSED, status_reason="wrong price")
    cli = Cli(sending_config(tmp_path / "mailer.toml", database.url, smtp_server))

    result = cli("campaign", "status", str(campaign_id), "--watch", ok=False)

    assert result.exit_code == 1
    assert "status: paused" in result.stdout and "wrong price" in result.stdout
