"""`mailer campaign send|schedule|pause|resume|cancel|retry|status`, `send-due`, `worker`, `demo`."""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from mailer.audit import cli_actor
from mailer.campaign_report import CampaignStatusReport, campaign_status
from mailer.cli import main
from mailer.cli.campaigns import campaign_group
from mailer.cli.context import AppContext, echo_json, json_option, pass_app
from mailer.cli.terminal import echo_line, terminal_safe
from mailer.delivery.due import DueReport, run_worker, send_due
from mailer.delivery.pipeline import SendReport, send_campaign_now
from mailer.lifecycle import (
    cancel_campaign,
    pause_campaign,
    resume_campaign,
    retry_campaign,
    schedule_campaign,
    start_send,
)
from mailer.models import DeliveryState


def _send_in_foreground(app: AppContext, campaign_id: int, as_json: bool) -> None:
    """Start (or go on with) a campaign and send it here, with a progress bar on a terminal."""
    total = start_send(app.config, app.db, campaign_id)
    bar: Any = None
    on_batch: Callable[[SendReport], None] | None = None
    if not as_json and sys.stdout.isatty() and total:
        bar = click.progressbar(length=total, label=f"campaign {campaign_id}", show_pos=True)
        bar.__enter__()
        done = [0]

        def on_batch(report: SendReport) -> None:
            now = report.handed_over + report.suppressed
            bar.update(now - done[0])
            done[0] = now

    try:
        report = send_campaign_now(app.config, app.db, campaign_id, handle_signals=True, on_batch=on_batch)
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    with app.db.session() as session:
        status = campaign_status(session, campaign_id)
    if as_json:
        echo_json({"send": report.__dict__, "status": status.as_dict()})
        return
    click.echo(describe_send(report))
    click.echo(describe_status(status))
    if report.paused_reason:
        raise click.ClickException(f"campaign {campaign_id} paused: {report.paused_reason}")


def describe_send(report: SendReport) -> str:
    why = [f"{report.hard_bounces} hard bounces suppressed"] if report.hard_bounces else []
    why += [f"{report.policy_blocks} refused by policy, not suppressed"] if report.policy_blocks else []
    hard = f" ({'; '.join(why)})" if why else ""
    line = (f"campaign {report.campaign_id}: {report.sent} sent, {report.deferred} deferred, "
            f"{report.failed} failed{hard}, {report.suppressed} suppressed")
    if report.interrupted:
        line += "; stopped early, the rest stays queued"
    if report.campaign_stopped:
        line += "; the campaign was paused or cancelled meanwhile"
    return line


def describe_status(status: CampaignStatusReport) -> str:
    counts = ", ".join(f"{n} {state.value}" for state, n in status.counts.items() if n) or "no deliveries"
    line = f"status: {status.status.value} ({counts})"
    if status.policy_blocks:
        line += (f"\npolicy blocks: {status.policy_blocks} (refused for the sender's reputation or "
                 "authentication, not the address; nobody suppressed)")
    if status.reason:
        line += f"\nreason: {terminal_safe(status.reason)}"
    if status.scheduled_at and status.status.value == "scheduled":
        line += f"\nscheduled for {status.scheduled_at.isoformat()}"
    if status.counts[DeliveryState.DEFERRED] and status.next_retry_at:
        line += f"\nnext retry of deferred messages at {status.next_retry_at.isoformat()} (by send-due)"
    if status.counts[DeliveryState.IN_DOUBT]:
        line += (f"\n{status.counts[DeliveryState.IN_DOUBT]} in doubt: they may have been delivered; "
                 f"`mailer campaign retry {status.id} --in-doubt` sends them again")
    return line


@click.command("send")
@click.argument("campaign_id", type=int)
@json_option
@pass_app
def campaign_send(app: AppContext, campaign_id: int, as_json: bool) -> None:
    """Send campaign ID now (after the compliance gate), with a progress bar and a summary.

    Ctrl-C or SIGTERM lets the messages in flight finish; run it again to go on. Refusals by
    policy (5.7.x, blocklists) fail without suppressing anyone, and enough of them
    (sending.policy_block_pause_share) pause the campaign with the reason.

    \b
    Example:
      $ mailer campaign send 3
      campaign 3: 1200 sent, 2 deferred, 1 failed, 4 suppressed
      status: sending (1200 sent, 2 deferred, 1 failed, 4 suppressed)
    """
    _send_in_foreground(app, campaign_id, as_json)


@click.command("schedule")
@click.argument("campaign_id", type=int)
@click.option("--at", "at_text", required=True, metavar="ISO-8601",
              help="When to send; without an offset it is this machine's local time.")
@pass_app
def campaign_schedule(app: AppContext, campaign_id: int, at_text: str) -> None:
    """Schedule campaign ID; `mailer send-due` (cron) sends it when its time comes.

    \b
    Example:
      $ mailer campaign schedule 3 --at 2026-12-01T09:00+01:00
      campaign 3 scheduled for 2026-12-01T08:00:00+00:00
    """
    try:
        at = dt.datetime.fromisoformat(at_text)
    except ValueError:
        raise click.BadParameter(f"{at_text!r} is not an ISO-8601 time such as 2026-12-01T09:00+01:00",
                                 param_hint="--at") from None
    if at.tzinfo is None:
        at = at.astimezone()  # the machine's local zone, as a person at this terminal means it
    start_check(app, campaign_id)
    with app.db.session() as session:
        campaign = schedule_campaign(session, campaign_id, at)
        when = campaign.scheduled_at
    assert when is not None
    click.echo(f"campaign {campaign_id} scheduled for {when.isoformat()}")


def start_check(app: AppContext, campaign_id: int) -> None:
    # the gate runs at schedule time too, so a broken campaign is found now and not at 3 a.m.
    from mailer.campaigns import ensure_stored_campaign_compliant, get_campaign
    from mailer.content.compose import Composer

    with app.db.session() as session:
        campaign = get_campaign(session, campaign_id)
        ensure_stored_campaign_compliant(session, app.config, campaign)
        Composer(app.config, campaign, campaign.mailing_list)


@click.command("pause")
@click.argument("campaign_id", type=int)
@click.option("--reason", default="", help="Why; shown by `campaign status`.")
@pass_app
def campaign_pause(app: AppContext, campaign_id: int, reason: str) -> None:
    """Pause a sending campaign; senders stop after the batch in flight.

    \b
    Example:
      $ mailer campaign pause 3 --reason "wrong price in the header"
      campaign 3 paused
    """
    with app.db.session() as session:
        pause_campaign(session, campaign_id, reason or f"paused by {cli_actor()}")
    click.echo(f"campaign {campaign_id} paused; `mailer campaign resume {campaign_id}` goes on")


@click.command("resume")
@click.argument("campaign_id", type=int)
@click.option("--later", is_flag=True, help="Only mark it sending; cron or a worker sends it.")
@json_option
@pass_app
def campaign_resume(app: AppContext, campaign_id: int, later: bool, as_json: bool) -> None:
    """Resume a paused campaign where it stopped, and send the rest now.

    \b
    Example:
      $ mailer campaign resume 3
      campaign 3: 800 sent, 0 deferred, 0 failed, 0 suppressed
    """
    with app.db.session() as session:
        resume_campaign(session, campaign_id)
    if later:
        click.echo(f"campaign {campaign_id} is sending again; send-due or a worker sends the rest")
        return
    _send_in_foreground(app, campaign_id, as_json)


@click.command("cancel")
@click.argument("campaign_id", type=int)
@click.option("--reason", default="", help="Why; shown by `campaign status`.")
@pass_app
def campaign_cancel(app: AppContext, campaign_id: int, reason: str) -> None:
    """Cancel a campaign for good: queued messages never go out.

    \b
    Example:
      $ mailer campaign cancel 3
      campaign 3 cancelled; 5000 queued messages will not be sent
    """
    with app.db.session() as session:
        count = cancel_campaign(session, campaign_id, reason or f"cancelled by {cli_actor()}")
    click.echo(f"campaign {campaign_id} cancelled; {count} queued messages will not be sent")


@click.command("retry")
@click.argument("campaign_id", type=int)
@click.option("--in-doubt", is_flag=True,
              help="Re-send the messages a crash left in doubt (some recipients may get them twice).")
@click.option("--later", is_flag=True, help="Only queue them; cron or a worker sends them.")
@json_option
@pass_app
def campaign_retry(app: AppContext, campaign_id: int, in_doubt: bool, later: bool, as_json: bool) -> None:
    """Queue failed and deferred deliveries again (or those in doubt) and send them now.

    \b
    Example:
      $ mailer campaign retry 3
      3 deliveries queued again
      campaign 3: 3 sent, 0 deferred, 0 failed, 0 suppressed
      $ mailer campaign retry 3 --in-doubt
    """
    with app.db.session() as session:
        count = retry_campaign(session, campaign_id, in_doubt=in_doubt)
    if not as_json:
        click.echo(f"{count} deliveries queued again")
    if later or not count:
        return
    _send_in_foreground(app, campaign_id, as_json)


@click.command("status")
@click.argument("campaign_id", type=int)
@json_option
@pass_app
def campaign_status_command(app: AppContext, campaign_id: int, as_json: bool) -> None:
    """Show a campaign's state, its deliveries counted by state, and its policy blocks.

    A policy block is a delivery the receiver refused for the sender's sake (5.7.x: a
    blocklist, DMARC, SPF); the address is kept. sending.policy_block_pause_share of them
    pauses the campaign, with the reason shown here.

    \b
    Example:
      $ mailer campaign status 3
      campaign 3 "December news"
      status: sent (4990 sent, 6 failed, 4 suppressed)
      policy blocks: 2 (refused for the sender's reputation or authentication, not the address; nobody suppressed)
    """
    with app.db.session() as session:
        status = campaign_status(session, campaign_id)
    if as_json:
        echo_json(status.as_dict())
        return
    echo_line(f'campaign {status.id} "{status.subject}"')
    click.echo(describe_status(status))


for _command in (campaign_send, campaign_schedule, campaign_pause, campaign_resume, campaign_cancel,
                 campaign_retry, campaign_status_command):
    campaign_group.add_command(_command)


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


@main.command("demo")
@click.option("--dir", "directory", default="demo", show_default=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Where the demo's database, config and Maildir go (replaced on each run).")
def demo_command(directory: Path) -> None:
    """The whole flow on embedded defaults: list, subscribers, a campaign sent over real SMTP.

    A capture server on loopback receives the messages and writes them to a Maildir.
    Nothing leaves this machine.

    \b
    Example:
      $ mailer demo
      $ mailer demo --dir /tmp/mailer-demo
    """
    from mailer.demo import run_demo

    result = run_demo(directory)
    report = result.report
    cfg = _shown(result.config_path)
    click.echo("harmony-mailer demo: a campaign sent through the real SMTP pipeline\n")
    rows = [
        ("database", f"{_shown(result.directory / 'mailer.db')} (SQLite)"),
        ("list", f"{result.list_name}: {result.subscribers} subscribers, 1 of them opted out earlier"),
        ("campaign", f"{result.campaign_id}, the shipped 'welcome' template"),
        ("sent", f"{report.sent} messages over SMTP to a capture server on 127.0.0.1:{result.smtp_port} "
                 f"in {result.seconds:.2f} s"),
        ("skipped", f"{result.subscribers - result.audience + report.suppressed} opted out "
                    f"(suppressed before the send: not in the audience, sent nothing)"),
        ("maildir", f"{_shown(result.maildir)} ({result.captured} messages; e.g. `mutt -f {_shown(result.maildir)}`)"),
        ("unsubscribe", f"{result.unsubscribe_url}"),
        ("", f"(the one-click link for {result.unsubscribe_for})"),
    ]
    for label, value in rows:
        click.echo(f"  {label:<12} {value}")
    click.echo("\nTry it:")
    click.echo(f"  mailer --config {cfg} campaign status {result.campaign_id}")
    click.echo(f"  mailer --config {cfg} serve      # then open {result.local_unsubscribe_url}")


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
