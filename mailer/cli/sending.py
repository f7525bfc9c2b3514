"""`mailer send-due` and `mailer worker`: sending what is due, from cron or a long-running process."""

from __future__ import annotations

import asyncio

import click

from mailer.cli import main
from mailer.cli.context import AppContext, echo_json, json_option, pass_app
from mailer.cli.reports import describe_send
from mailer.cli.terminal import echo_line
from mailer.delivery.due import DueReport, run_worker, send_due


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


@main.command("send-due")
@click.option("--max-seconds", type=click.FloatRange(min=1), default=None,
              help="Claim no new batch after this many seconds (keep cron runs short).")
@json_option
@pass_app
def send_due_command(app: AppContext, max_seconds: float | None, as_json: bool) -> None:
    """Send what is due: scheduled campaigns whose time has come and deferred retries. For cron.

    Overlapping runs share the work without sending anything twice. A campaign more than
    sending.max_lateness past its time is marked missed, not sent.

    \b
    Example (crontab):
      * * * * *  mailer --config /etc/mailer.toml send-due --max-seconds 50
    """
    report = asyncio.run(send_due(app.config, app.db, max_seconds=max_seconds, handle_signals=True))
    if as_json:
        echo_json(report.as_dict())
    else:
        for line in describe_due(report):
            echo_line(line)


@main.command("worker")
@click.option("--poll-seconds", type=click.FloatRange(min=0.1), default=5.0, show_default=True,
              help="How long to wait when nothing is due.")
@pass_app
def worker_command(app: AppContext, poll_seconds: float) -> None:
    """Keep sending what is due until SIGTERM; run several, on several machines, on PostgreSQL.

    \b
    Example:
      $ mailer worker --poll-seconds 10
    """
    click.echo("worker started; SIGTERM or Ctrl-C stops it after the messages in flight", err=True)

    def on_cycle(report: DueReport) -> None:
        for line in describe_due(report):
            echo_line(line)

    asyncio.run(run_worker(app.config, app.db, poll_seconds=poll_seconds, on_cycle=on_cycle))
    click.echo("worker stopped", err=True)
