"""`mailer send-due` and `mailer worker`: sending what is due, from cron or a long-running process."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any, TypeVar

import click
from sqlalchemy.exc import SQLAlchemyError

from mailer.campaigns import get_campaign
from mailer.cli import main
from mailer.cli.context import AppContext, echo_json, json_option, pass_app
from mailer.cli.reports import describe_send
from mailer.cli.terminal import echo_line
from mailer.delivery.due import DueReport, run_worker, send_due
from mailer.delivery.progress import DEFAULT_PROGRESS_EVERY, LogFormat, ProgressLog

F = TypeVar("F", bound=Callable[..., Any])


def log_options(func: F) -> F:
    """Adds --log-format and --progress-every: the lines a sending process writes to stderr."""
    func = click.option("--progress-every", type=click.FloatRange(min=1), default=DEFAULT_PROGRESS_EVERY,
                        show_default=True, metavar="SECONDS",
                        help="Log a progress line per campaign this often while sending.")(func)
    return click.option("--log-format", type=click.Choice([f.value for f in LogFormat]), default=None,
                        help="Log lines on stderr as key=value (logfmt, the default) or JSON.")(func)


def progress_log(app: AppContext, log_format: str | None, every: float) -> ProgressLog:
    """The log of this process, one line per event on stderr."""

    def status_of(campaign_id: int) -> str:
        # a log line must not end a send: a database gone for a moment leaves the status out
        try:
            with app.db.session() as session:
                return get_campaign(session, campaign_id).status.value
        except SQLAlchemyError:
            return "unknown"

    return ProgressLog(lambda line: click.echo(line, err=True), LogFormat(log_format or LogFormat.LOGFMT),
                       every, status_of=status_of)


def describe_due(report: DueReport) -> list[str]:
    lines = [f"campaign {m.id} missed: scheduled for {m.scheduled_at.isoformat()}, too late to send; "
             f"not sent" for m in report.missed]
    lines += [f"campaign {cid} started" for cid in report.started]
    lines += [f"campaign {cid} not sent: {why}" for cid, why in report.refused.items()]
    if report.in_doubt:
        lines.append(f"{report.in_doubt} deliveries of a stopped sender set aside as in doubt")
    lines += [describe_send(r) for r in report.sends if r.handed_over or r.suppressed or r.paused_reason]
    lines += [f"campaign {r.campaign_id} paused: {r.paused_reason}" for r in report.sends if r.paused_reason]
    return lines


def log_due(log: ProgressLog, report: DueReport) -> None:
    """What a run found besides sending: missed schedules, refusals, deliveries left in doubt."""
    for missed in report.missed:
        log.event("campaign_missed", {"campaign": missed.id, "scheduled_at": missed.scheduled_at.isoformat()},
                  "warning")
    for campaign_id, why in report.refused.items():
        log.event("campaign_refused", {"campaign": campaign_id, "reason": why}, "warning")
    if report.in_doubt:
        log.event("deliveries_in_doubt", {"count": report.in_doubt}, "warning")


@main.command("send-due")
@click.option("--max-seconds", type=click.FloatRange(min=1), default=None,
              help="Claim no new batch after this many seconds (keep cron runs short).")
@log_options
@json_option
@pass_app
def send_due_command(
    app: AppContext, max_seconds: float | None, log_format: str | None, progress_every: float, as_json: bool
) -> None:
    """Send what is due: scheduled campaigns whose time has come and deferred retries. For cron.

    Overlapping runs share the work without sending anything twice. A campaign more than
    sending.max_lateness past its time is marked missed, not sent. A summary goes to stdout,
    log lines (campaign started, progress, finished) to stderr.

    \b
    Example (crontab):
      * * * * *  mailer --config /etc/mailer.toml send-due --max-seconds 50
    """
    log = progress_log(app, log_format, progress_every)
    report = asyncio.run(send_due(app.config, app.db, max_seconds=max_seconds, handle_signals=True, watch=log))
    log_due(log, report)
    if as_json:
        echo_json(report.as_dict())
    else:
        for line in describe_due(report):
            echo_line(line)


@main.command("worker")
@click.option("--poll-seconds", type=click.FloatRange(min=0.1), default=5.0, show_default=True,
              help="How long to wait when nothing is due.")
@log_options
@pass_app
def worker_command(app: AppContext, poll_seconds: float, log_format: str | None, progress_every: float) -> None:
    """Keep sending what is due until SIGTERM; run several, on several machines, on PostgreSQL.

    Log lines go to stderr, one per event (key=value, or JSON with --log-format json):
    worker started and stopped, campaign started, progress every --progress-every seconds,
    campaign finished; a summary of each run goes to stdout.

    \b
    Example:
      $ mailer worker --poll-seconds 10
      ts=2026-12-01T09:00:00.120Z level=info event=worker_started pid=4242 poll_seconds=10.0
      ts=2026-12-01T09:00:00.351Z level=info event=campaign_started campaign=3
      ts=2026-12-01T09:00:30.362Z level=info event=campaign_progress campaign=3 sent=27012 ...
    """
    log = progress_log(app, log_format, progress_every)
    log.event("worker_started", {"pid": os.getpid(), "poll_seconds": poll_seconds})

    def on_cycle(report: DueReport) -> None:
        log_due(log, report)
        for line in describe_due(report):
            echo_line(line)

    cycles = asyncio.run(run_worker(app.config, app.db, poll_seconds=poll_seconds, on_cycle=on_cycle, watch=log))
    log.event("worker_stopped", {"pid": os.getpid(), "cycles": cycles})
