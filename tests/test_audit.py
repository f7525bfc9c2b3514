"""The audit trail through `mailer audit ls`: who did what to whose data, when and why."""

from __future__ import annotations

import datetime as dt
import json

import sqlalchemy as sa
from cli_helpers import Cli

from mailer.db import Database
from mailer.models import AuditEvent


def test_suppress_add_is_recorded_with_actor_and_reason(cli: Cli) -> None:
    cli("suppress", "add", "ana@example.com", "--reason", "asked by phone")
    cli("suppress", "add", "ana@example.com", "--reason", "again")  # nothing new: no second event

    events = json.loads(cli("audit", "ls", "--json").stdout)

    assert [(e["action"], e["subject"], e["reason"]) for e in events] == [
        ("suppress", "ana@example.com", "asked by phone")
    ]
    assert events[0]["actor"].startswith("cli")
    assert dt.datetime.fromisoformat(events[0]["at"]).tzinfo is not None


def test_audit_ls_prints_one_line_per_event_and_filters(cli: Cli, database: Database) -> None:
    cli("list", "create", "news")
    cli("subscriber", "add", "ana@example.com", "--list", "news")
    cli("subscriber", "export", "ana@example.com")
    cli("suppress", "add", "bo@example.com")
    with database.session() as session:
        # an event from last year, which --since must leave out
        old = session.scalar(sa.select(AuditEvent).where(AuditEvent.action == "export"))
        assert old is not None
        old.at = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC)

    text = cli("audit", "ls").stdout.splitlines()
    recent = cli("audit", "ls", "--since", "2026-01-01").stdout.splitlines()
    exports = json.loads(cli("audit", "ls", "--action", "export", "--json").stdout)

    assert len(text) == 2
    assert text[0].startswith("2025-01-02 03:04:05  export")
    assert "bo@example.com" in text[1] and "suppress" in text[1]
    assert len(recent) == 1 and "bo@example.com" in recent[0]
    assert [e["subject"] for e in exports] == ["ana@example.com"]


def test_audit_ls_with_nothing_recorded_says_so(cli: Cli) -> None:
    assert cli("audit", "ls").stdout.strip() == "no audit events"
    assert json.loads(cli("audit", "ls", "--json").stdout) == []


def test_a_bad_since_is_one_clear_line(cli: Cli) -> None:
    result = cli("audit", "ls", "--since", "last tuesday", ok=False)
    assert result.exit_code == 1
    assert result.stderr.strip() == "Error: --since 'last tuesday' is not an ISO-8601 date or date and time"


def test_a_reason_with_line_breaks_cannot_pass_for_another_event(cli: Cli) -> None:
    cli("list", "create", "news")
    cli("subscriber", "add", "ana@example.com", "--list", "news")
    forged = "ticket 1\n2026-01-01 00:00:00  erase        cli:root        ana@example.com  done"
    cli("subscriber", "export", "ana@example.com", "--reason", forged)

    text = cli("audit", "ls").stdout.splitlines()

    assert len(text) == 1
    assert text[0].endswith("ticket 1 2026-01-01 00:00:00 erase cli:root ana@example.com done")
    # the record itself keeps what was typed
    assert json.loads(cli("audit", "ls", "--json").stdout)[0]["reason"] == forged


def test_audit_ls_lines_up_its_columns_whatever_the_actions_are_called(cli: Cli, database: Database) -> None:
    cli("suppress", "add", "bo@example.com", "--reason", "asked by phone")
    with database.session() as session:
        session.add(AuditEvent(action="campaign_cancelled", actor="mailer", subject="campaign 7", reason="r"))

    lines = cli("audit", "ls").stdout.splitlines()

    assert len(lines) == 2
    # the subject column starts at the same place on every line
    starts = {line.index(subject) for line, subject in zip(lines, ("bo@example.com", "campaign 7"), strict=True)}
    assert len(starts) == 1, lines
