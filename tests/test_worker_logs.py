"""What a sending process writes to stderr: one line per event, key=value or JSON, journal-friendly."""

from __future__ import annotations

import datetime as dt
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import Cli
from sending_helpers import add_audience, emails, make_campaign, sending_config
from smtp_faults import FaultyServer

from mailer.db import Database
from mailer.delivery.pipeline import SendReport
from mailer.delivery.progress import LogFormat, ProgressLog, format_line
from mailer.models import CampaignStatus, utcnow

PAIR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)(?: |$)')


def parse_logfmt(line: str) -> dict[str, str]:
    """A logfmt line as a log shipper reads it; fails on anything that is not key=value pairs."""
    pairs = PAIR.findall(line)
    assert " ".join(f"{k}={v}" for k, v in pairs) == line, f"not logfmt: {line!r}"
    return {k: json.loads(v) if v.startswith('"') else v for k, v in pairs}


def journal_lines(stderr: str) -> list[str]:
    assert "\r" not in stderr and "\x1b" not in stderr  # no progress bar, no colours
    return stderr.splitlines()


def events(records: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [r for r in records if r["event"] == name]


def test_a_worker_logs_start_progress_and_finish_of_a_campaign(
    tmp_path: Path, database: Database, smtp_server: FaultyServer
) -> None:
    list_id = add_audience(database, "news", emails(150))
    # 150 messages at 50 a second: three seconds of sending, a progress line each second
    config = sending_config(tmp_path / "mailer.toml", database.url, smtp_server, rate=50, batch_size=10)
    campaign_id = make_campaign(database, list_id, status=CampaignStatus.SCHEDULED,
                                scheduled_at=utcnow() - dt.timedelta(seconds=1))
    worker = subprocess.Popen(
        [sys.executable, "-m", "mailer", "--config", str(config), "worker", "--poll-seconds", "0.2",
         "--progress-every", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        end = time.monotonic() + 60
        while len(smtp_server.messages) < 150 and time.monotonic() < end:
            time.sleep(0.1)
        time.sleep(0.5)  # the finish line follows the last batch
    finally:
        worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate(timeout=30)

    assert worker.returncode == 0, err
    records = [parse_logfmt(line) for line in journal_lines(err)]
    assert [r["event"] for r in records][:2] == ["worker_started", "campaign_started"]
    assert records[-1]["event"] == "worker_stopped"
    assert all(r["level"] == "info" and r["ts"].endswith("Z") for r in records)
    progress = events(records, "campaign_progress")
    assert len(progress) >= 2, err
    sent = [int(p["sent"]) for p in progress]
    assert sent == sorted(sent) and 0 < sent[0] < 150
    assert all(p["campaign"] == str(campaign_id) and float(p["rate"]) > 0 for p in progress)
    assert {"deferred", "failed", "suppressed", "elapsed"} <= set(progress[0])
    finished = events(records, "campaign_finished")
    assert len(finished) == 1
    assert finished[0]["sent"] == "150" and finished[0]["status"] == "sent" and finished[0]["outcome"] == "done"
    assert "150 sent" in out  # the summary for people stays on stdout


def test_send_due_logs_json_lines_and_warns_of_a_missed_schedule(
    tmp_path: Path, database: Database, smtp_server: FaultyServer
) -> None:
    list_id = add_audience(database, "news", emails(3))
    due = make_campaign(database, list_id, status=CampaignStatus.SCHEDULED,
                        scheduled_at=utcnow() - dt.timedelta(minutes=1))
    missed = make_campaign(database, list_id, status=CampaignStatus.SCHEDULED,
                           scheduled_at=utcnow() - dt.timedelta(days=3))
    cli = Cli(sending_config(tmp_path / "mailer.toml", database.url, smtp_server))

    result = cli("send-due", "--log-format", "json")

    records = [json.loads(line) for line in journal_lines(result.stderr)]
    assert [(r["event"], r.get("campaign")) for r in records] == [
        ("campaign_started", due), ("campaign_finished", due), ("campaign_missed", missed)]
    finished = records[1]
    assert (finished["sent"], finished["failed"], finished["status"], finished["level"]) == (3, 0, "sent", "info")
    assert records[2]["level"] == "warning"
    assert f"campaign {due}: 3 sent" in result.stdout
    assert cli("send-due").output == ""  # nothing to do, nothing logged


def test_campaign_send_logs_when_not_on_a_terminal_and_a_pause_is_a_warning(
    tmp_path: Path, database: Database, smtp_server: FaultyServer
) -> None:
    list_id = add_audience(database, "news", emails(40))
    campaign_id = make_campaign(database, list_id)
    cli = Cli(sending_config(tmp_path / "mailer.toml", database.url, smtp_server, max_errors=3))
    smtp_server.faults.refuse_all_connections = True

    result = cli("campaign", "send", str(campaign_id), ok=False)

    lines = journal_lines(result.stderr)
    records = [parse_logfmt(line) for line in lines if line.startswith("ts=")]
    assert [r["event"] for r in records] == ["campaign_started", "campaign_finished"]
    finished = records[1]
    assert finished["level"] == "warning" and finished["outcome"] == "paused" and finished["status"] == "paused"
    assert finished["reason"]


def test_stored_text_in_a_field_cannot_break_or_colour_a_line() -> None:
    reason = 'relay said "no"\r\n\x1b[31mts=forged level=info\u2028'
    line = format_line({"event": "campaign_finished", "reason": reason}, LogFormat.LOGFMT)
    assert "\n" not in line and "\r" not in line and "\x1b" not in line and "\u2028" not in line
    assert parse_logfmt(line)["reason"] == reason  # escaped on the line, whole again when read
    as_json = format_line({"reason": reason}, LogFormat.JSON)
    assert "\x1b" not in as_json and "\u2028" not in as_json and json.loads(as_json)["reason"] == reason


@pytest.mark.parametrize("every, expected", [(30.0, 0), (1.0, 2)])
def test_progress_lines_come_every_n_seconds_not_every_batch(every: float, expected: int) -> None:
    lines: list[str] = []
    clock = iter([0.0, 0.5, 1.2, 1.4, 2.6])
    log = ProgressLog(lines.append, every=every, monotonic=lambda: next(clock))
    log.started(7)
    for sent in (10, 20, 30, 40):
        log.on_batch(SendReport(campaign_id=7, sent=sent))
    progress = [parse_logfmt(line) for line in lines if "campaign_progress" in line]
    assert len(progress) == expected
    if expected:
        assert [p["sent"] for p in progress] == ["20", "40"]
        assert progress[0]["rate"] == "16.7"  # 20 messages in 1.2 s
