"""`mailer campaign`: write, check, preview, test, send, schedule and follow a campaign."""

from __future__ import annotations

import datetime as dt
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from mailer.archive import set_archived
from mailer.audit import cli_actor
from mailer.campaign_report import CampaignStatusReport, campaign_status
from mailer.campaigns import (
    check_campaign_by_id,
    create_campaign,
    ensure_campaign_may_start,
    list_campaigns,
    preview_campaign,
    send_test,
)
from mailer.cli import main
from mailer.cli.context import AppContext, echo_json, json_option, pass_app
from mailer.cli.reports import describe_send, describe_status
from mailer.cli.sending import log_options, progress_log
from mailer.cli.terminal import echo_line, terminal_safe
from mailer.content.compose import archive_url
from mailer.content.visible import message_parts, parse_message
from mailer.delivery.pipeline import SendReport, send_campaign_now
from mailer.delivery.progress import ProgressLog
from mailer.doctor.checkup import preflight
from mailer.doctor.spam import INSTALL_HINT, SpamCheckError, SpamVerdict, spam_verdict
from mailer.lifecycle import (
    OPEN_STATES,
    begin_send,
    cancel_campaign,
    pause_campaign,
    queue_campaign,
    resume_campaign,
    retry_campaign,
    schedule_campaign,
)
from mailer.models import CampaignStatus

# headers a person wants to see in a preview, in this order
PREVIEW_HEADERS = ("From", "Reply-To", "To", "Subject", "Date", "Message-ID", "List-Id",
                   "List-Unsubscribe", "List-Unsubscribe-Post")


@main.group("campaign")
def campaign_group() -> None:
    """Campaigns: write, check, send and follow them.

    \b
    Example:
      $ mailer campaign create --list news --subject "Welcome to Harmony News" --template welcome
      1
      $ mailer campaign check 1
      $ mailer campaign preview 1 --email ana@example.com
      $ mailer campaign send 1
    """


@campaign_group.command("create")
@click.option("--list", "list_name", required=True, help="The list the campaign goes to.")
@click.option("--subject", required=True, help="The subject line; it must describe the content.")
@click.option("--template", required=True, metavar="PATH|NAME",
              help="An .html.j2 file (a sibling .txt.j2 is the text part) or a shipped template name.")
@click.option("--from", "from_address", default=None, metavar="ADDR",
              help="One sender mailbox on the sending domain, 'Name <user@domain>' with the name as "
                   "plain text (default: sender.from).")
@click.option("--archive", "archived", is_flag=True,
              help="Publish it at /archive once sent, and give templates view_in_browser_url.")
@json_option
@pass_app
def campaign_create(
    app: AppContext, list_name: str, subject: str, template: str, from_address: str | None, archived: bool,
    as_json: bool,
) -> None:
    """Create a draft campaign and print its id.

    The template text is stored with the campaign, so editing the file later changes
    nothing. Problems the compliance gate will refuse are reported on stderr.

    \b
    Example:
      $ mailer campaign create --list news --subject "Welcome to Harmony News" --template welcome
      1
      $ mailer campaign create --list news --subject "Summer concerts" --template ./summer.html.j2
      2
      $ mailer campaign create --list news --subject "Autumn tour" --template welcome \\
          --from "Harmony Événements <events@harmonymails.com>"
      3
    """
    with app.db.session() as session:
        created = create_campaign(
            session, app.config, list_name=list_name, subject=subject, template=template,
            from_address=from_address,
        )
        campaign_id = created.campaign.id
        if archived:
            set_archived(session, campaign_id, True, cli_actor())
    if as_json:
        echo_json({"id": campaign_id, "problems": created.problems})
    else:
        click.echo(campaign_id)
    for problem in created.problems:
        echo_line(f"warning: {problem}", err=True)
    if created.problems:
        click.echo(f"`mailer campaign check {campaign_id}` refuses to send until these are fixed", err=True)


@campaign_group.command("archive")
@click.argument("campaign_id", type=int)
@click.argument("state", type=click.Choice(["on", "off"]))
@pass_app
def campaign_archive(app: AppContext, campaign_id: int, state: str) -> None:
    """Publish campaign ID at /archive once it is sent (on), or take it down (off).

    The archive shows it as nobody in particular would get it: no name, no address, no
    working unsubscribe link. Messages sent while it is on link to it ("View this email in
    your browser").

    \b
    Example:
      $ mailer campaign archive 3 on
      campaign 3 is published at https://harmonymails.com/archive/3 once sent
    """
    with app.db.session() as session:
        campaign = set_archived(session, campaign_id, state == "on", cli_actor())
        url = archive_url(app.config, campaign)
        sent = campaign.status is CampaignStatus.SENT
    if state == "off":
        click.echo(f"campaign {campaign_id} is not in the archive")
    else:
        click.echo(f"campaign {campaign_id} is published at {url}{'' if sent else ' once sent'}")


@campaign_group.command("ls")
@json_option
@pass_app
def campaign_ls(app: AppContext, as_json: bool) -> None:
    """Show every campaign, newest first.

    \b
    Example:
      $ mailer campaign ls
      ID  STATUS  KIND      LIST  SUBJECT
       1  draft   campaign  news  Welcome to Harmony News
    """
    with app.db.session() as session:
        summaries = list_campaigns(session)
    if as_json:
        echo_json([s.__dict__ for s in summaries])
        return
    if not summaries:
        click.echo("no campaigns yet; create one with `mailer campaign create`")
        return
    id_width = max(2, *(len(str(s.id)) for s in summaries))
    list_width = max(4, *(len(terminal_safe(s.list_name)) for s in summaries))
    click.echo(f"{'ID':>{id_width}}  {'STATUS':<9}  {'KIND':<8}  {'LIST':<{list_width}}  SUBJECT")
    for s in summaries:
        echo_line(f"{s.id:>{id_width}}  {s.status:<9}  {s.kind:<8}  {terminal_safe(s.list_name):<{list_width}}"
                  f"  {s.subject}")


@campaign_group.command("check")
@click.argument("campaign_id", type=int)
@click.option("--spam", is_flag=True, help="Add SpamAssassin's score of a sample message, with the fixes.")
@json_option
@pass_app
@click.pass_context
def campaign_check(ctx: click.Context, app: AppContext, campaign_id: int, spam: bool, as_json: bool) -> None:
    """Run the compliance gate; list every problem and exit 1 when there is any.

    The campaign is rendered for a subscriber of each kind on its list and every
    message is checked: subject, sender, footer in both parts, unsubscribe headers.
    With --spam, SpamAssassin (when installed) scores a sample message; a score at
    or over its threshold counts as a problem.

    \b
    Example:
      $ mailer campaign check 1
      campaign 1 passes the compliance gate
      $ mailer campaign check 1 --spam
    """
    with app.db.session() as session:
        problems = check_campaign_by_id(session, app.config, campaign_id)
        sample = preview_campaign(session, app.config, campaign_id).message.data if spam else None
    verdict = spam_check(sample, as_json) if sample is not None else None
    if verdict is not None and verdict.is_spam:
        problems = [*problems, f"SpamAssassin scores it {verdict.score} (spam from {verdict.required})"]
    if as_json:
        report: dict[str, Any] = {"id": campaign_id, "ok": not problems, "problems": problems}
        if spam:
            report["spam"] = spam_json(verdict)
        echo_json(report)
    elif problems:
        click.echo(f"campaign {campaign_id} fails the compliance gate:", err=True)
        for problem in problems:
            echo_line(f"  - {problem}", err=True)
    else:
        click.echo(f"campaign {campaign_id} passes the compliance gate")
    if problems:
        ctx.exit(1)


def spam_check(message: bytes, as_json: bool) -> SpamVerdict | None:
    """SpamAssassin's verdict, printed unless as JSON; None (with how to install it) without it."""
    try:
        verdict = spam_verdict(message)
    except SpamCheckError as exc:
        # the spam score is advice: the compliance gate's answer still counts on its own
        echo_line(f"no spam score: {exc}", err=True)
        return None
    if as_json:
        return verdict
    if verdict is None:
        click.echo(INSTALL_HINT, err=True)
        return None
    click.echo(f"SpamAssassin: score {verdict.score} (spam from {verdict.required})")
    for rule in verdict.rules:
        echo_line(f"  {rule.points:>5} {rule.name:<24} {rule.description}")
        if rule.fix:
            echo_line(f"        fix: {rule.fix}")
    return verdict


def spam_json(verdict: SpamVerdict | None) -> dict[str, Any]:
    if verdict is None:
        return {"installed": False, "hint": INSTALL_HINT}
    rules = [{"name": r.name, "points": r.points, "description": r.description, "fix": r.fix}
             for r in verdict.rules]
    return {"installed": True, "score": verdict.score, "required": verdict.required, "rules": rules}


@campaign_group.command("preview")
@click.argument("campaign_id", type=int)
@click.option("--email", default=None, metavar="ADDR", help="Render for this subscriber of the list.")
@click.option("--raw", is_flag=True, help="Print the exact bytes that would be sent.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the HTML part to this file, to open in a browser.")
@pass_app
def campaign_preview(
    app: AppContext, campaign_id: int, email: str | None, raw: bool, html_path: Path | None
) -> None:
    """Show one subscriber's message (a sample subscriber without --email).

    \b
    Example:
      $ mailer campaign preview 1 --email ana@example.com
      $ mailer campaign preview 1 --raw > message.eml
      $ mailer campaign preview 1 --html preview.html
    """
    with app.db.session() as session:
        preview = preview_campaign(session, app.config, campaign_id, email)
    message = preview.message
    parsed = parse_message(message.data)
    text, html = message_parts(parsed)
    if html_path is not None:
        html_path.write_text(html, encoding="utf-8")
    if raw:
        sys.stdout.buffer.write(message.data)
        sys.stdout.flush()
        return
    echo_line(f"Envelope: MAIL FROM:<{message.envelope_from}> RCPT TO:<{message.recipient}>")
    for name in PREVIEW_HEADERS:
        for value in parsed.get_all(name, []):
            echo_line(f"{name}: {' '.join(str(value).split())}")
    if "DKIM-Signature" in parsed:
        click.echo(f"DKIM-Signature: d={app.config.dkim.domain} s={app.config.dkim.selector} (signed)")
    click.echo("")
    click.echo("----- text part -----")
    for line in text.rstrip("\n").split("\n"):
        echo_line(line.removesuffix("\r"))
    click.echo("")
    where = f"written to {html_path}" if html_path else "add --html FILE to open it in a browser"
    click.echo(f"----- HTML part: {len(html):,} characters, {where} -----")


@campaign_group.command("test")
@click.argument("campaign_id", type=int)
@click.option("--to", "to", required=True, metavar="ADDR", help="Where to send the test message.")
@pass_app
def campaign_test(app: AppContext, campaign_id: int, to: str) -> None:
    """Send one real message, its subject marked [TEST], through the SMTP settings.

    The message uses the data of the list's subscriber with that address, or of a
    sample subscriber; it is not counted as a delivery.

    \b
    Example:
      $ mailer campaign test 1 --to me@harmonymails.com
      sent a test of campaign 1 to me@harmonymails.com
    """
    with app.db.session() as session:
        message = send_test(session, app.config, campaign_id, to)
    echo_line(f"sent a test of campaign {campaign_id} to {message.recipient} ({message.message_id})")


def _progress_bar(campaign_id: int, total: int) -> tuple[Any, Callable[[SendReport], None]]:
    bar: Any = click.progressbar(length=total, label=f"campaign {campaign_id}", show_pos=True)
    bar.__enter__()
    done = [0]

    def on_batch(report: SendReport) -> None:
        now = report.handed_over + report.suppressed
        bar.update(now - done[0])
        done[0] = now

    return bar, on_batch


def _send_in_foreground(app: AppContext, campaign_id: int, as_json: bool, log: ProgressLog | None = None) -> None:
    """Start (or go on with) a campaign and send it here: log lines when `log` is given, else a
    progress bar on a terminal."""
    started = begin_send(app.config, app.db, campaign_id)
    total = started.open_deliveries
    bar: Any = None
    on_batch: Callable[[SendReport], None] | None = None
    if log is not None:
        on_batch = log.on_batch
        log.started(campaign_id)
    elif not as_json and sys.stdout.isatty() and total:
        bar, on_batch = _progress_bar(campaign_id, total)
    try:
        report = send_campaign_now(app.config, app.db, campaign_id, handle_signals=True, on_batch=on_batch,
                                   checked=started.checked)
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    if log is not None:
        log.finished(report)
    with app.db.session() as session:
        status = campaign_status(session, campaign_id)
    if as_json:
        echo_json({"send": report.__dict__, "status": status.as_dict()})
        return
    click.echo(describe_send(report))
    click.echo(describe_status(status))
    if report.paused_reason:
        raise click.ClickException(f"campaign {campaign_id} paused: {report.paused_reason}")


def _queue(app: AppContext, campaign_id: int, as_json: bool) -> None:
    """Hand the campaign to the workers: due now, sent by the next worker or send-due run."""
    ensure_campaign_may_start(app.config, app.db, campaign_id)
    with app.db.session() as session:
        campaign = queue_campaign(session, campaign_id)
        status, when = campaign.status, campaign.scheduled_at
    if as_json:
        echo_json({"id": campaign_id, "status": status.value, "scheduled_at": when.isoformat() if when else None})
        return
    if status is CampaignStatus.SENDING:
        click.echo(f"campaign {campaign_id} is already sending; workers and send-due send the rest")
    else:
        click.echo(f"campaign {campaign_id} queued: a worker or the next send-due run sends it")
    click.echo(f"follow it with `mailer campaign status {campaign_id} --watch`")


@campaign_group.command("send")
@click.argument("campaign_id", type=int)
@click.option("--queue", is_flag=True,
              help="Do not send here: make it due now for `mailer worker` / send-due and return at once.")
@click.option("--force", is_flag=True,
              help="Send even when the quick doctor finds receivers would refuse it (audited).")
@log_options
@json_option
@pass_app
def campaign_send(app: AppContext, campaign_id: int, queue: bool, force: bool, log_format: str | None,
                  progress_every: float, as_json: bool) -> None:
    """Send campaign ID now (after the compliance gate), with a progress bar and a summary.

    Ctrl-C or SIGTERM lets the messages in flight finish; run it again to go on. Refusals by
    policy (5.7.x, blocklists) fail without suppressing anyone, and enough of them
    (sending.policy_block_pause_share) pause the campaign with the reason. When stderr is not
    a terminal (cron, systemd), or with --log-format, log lines go to stderr instead of the bar.

    First a quick doctor asks DNS whether the DKIM key matches its published record
    and SPF lets the relay send; a definite no refuses the send, naming the check.
    No answer never blocks. --force sends anyway and records it in the audit trail.

    \b
    Example:
      $ mailer campaign send 3
      campaign 3: 1200 sent, 2 deferred, 1 failed, 4 suppressed
      status: sending (1200 sent, 2 deferred, 1 failed, 4 suppressed)
      $ mailer campaign send 3 --queue
      campaign 3 queued: a worker or the next send-due run sends it
    """
    for finding in preflight(app.config, app.db, campaign_id, force, cli_actor()):
        echo_line(f"warning: sending despite {finding.check}: {finding.message}", err=True)
    if queue:
        _queue(app, campaign_id, as_json)
        return
    logging = log_format is not None or not sys.stderr.isatty()
    log = progress_log(app, log_format, progress_every) if logging else None
    _send_in_foreground(app, campaign_id, as_json, log)


@campaign_group.command("schedule")
@click.argument("campaign_id", type=int)
@click.option("--at", "at_text", required=True, metavar="ISO-8601|now",
              help="When to send; without an offset it is this machine's local time; `now`: due at once.")
@pass_app
def campaign_schedule(app: AppContext, campaign_id: int, at_text: str) -> None:
    """Schedule campaign ID; `mailer send-due` (cron) or a worker sends it when its time comes.

    \b
    Example:
      $ mailer campaign schedule 3 --at 2026-12-01T09:00+01:00
      campaign 3 scheduled for 2026-12-01T08:00:00+00:00
      $ mailer campaign schedule 3 --at now
    """
    if at_text.strip().lower() == "now":
        _queue(app, campaign_id, as_json=False)
        return
    try:
        at = dt.datetime.fromisoformat(at_text)
    except ValueError:
        raise click.BadParameter(f"{at_text!r} is not an ISO-8601 time such as 2026-12-01T09:00+01:00",
                                 param_hint="--at") from None
    if at.tzinfo is None:
        at = at.astimezone()  # the machine's local zone, as a person at this terminal means it
    ensure_campaign_may_start(app.config, app.db, campaign_id)
    with app.db.session() as session:
        campaign = schedule_campaign(session, campaign_id, at)
        when = campaign.scheduled_at
    assert when is not None
    click.echo(f"campaign {campaign_id} scheduled for {when.isoformat()}")


@campaign_group.command("pause")
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


@campaign_group.command("resume")
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


@campaign_group.command("cancel")
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


@campaign_group.command("retry")
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


# states a watched campaign does not leave on its own
WATCH_ENDS = (CampaignStatus.SENT, CampaignStatus.PAUSED, CampaignStatus.CANCELLED, CampaignStatus.MISSED,
              CampaignStatus.DRAFT)
WATCH_POLL_SECONDS = 2.0  # each look counts the campaign's deliveries: cheap, but not free on a big list


@campaign_group.command("status")
@click.argument("campaign_id", type=int)
@click.option("--watch", is_flag=True,
              help="Follow it with a progress bar until it is sent, paused or cancelled; Ctrl-C stops "
                   "watching, not sending.")
@json_option
@pass_app
@click.pass_context
def campaign_status_command(ctx: click.Context, app: AppContext, campaign_id: int, watch: bool,
                            as_json: bool) -> None:
    """Show a campaign's state, its deliveries counted by state, and what came back.

    What came back: hard and soft bounces, policy blocks, spam complaints and unsubscribes,
    by mail, webhook or link, and the complaint rate, with a warning over Gmail's 0.3%.

    A policy block is a delivery the receiver refused for the sender's sake (5.7.x: a
    blocklist, DMARC, SPF); the address is kept. sending.policy_block_pause_share of them
    pauses the campaign, with the reason shown here. With --watch it exits 0 once the
    campaign is sent, 1 when it ends paused, cancelled or missed.

    \b
    Example:
      $ mailer campaign status 3
      campaign 3 "December news"
      status: sent (4990 sent, 6 failed, 4 suppressed)
      policy blocks: 2 (refused for the sender's reputation or authentication, not the address; nobody suppressed)
      came back: 4 hard bounces, 3 soft bounces, 2 policy blocks, 1 complaints, 12 unsubscribes; complaint rate 0.02%
      $ mailer campaign send 3 --queue && mailer campaign status 3 --watch
    """
    with app.db.session() as session:
        status = campaign_status(session, campaign_id)
    if watch and not as_json:
        echo_line(f'campaign {status.id} "{status.subject}"')
        try:
            status = _watch(app, status)
        except KeyboardInterrupt:
            click.echo(f"\nstopped watching; campaign {campaign_id} goes on", err=True)
            ctx.exit(130)
    elif watch:
        status = _wait_until_it_ends(app, status, lambda _status: None)
    if as_json:
        echo_json(status.as_dict())
    else:
        if not watch:
            echo_line(f'campaign {status.id} "{status.subject}"')
        click.echo(describe_status(status))
    if watch and status.status is not CampaignStatus.SENT:
        ctx.exit(1)


def _done_and_total(status: CampaignStatusReport) -> tuple[int, int]:
    total = sum(status.counts.values())
    return total - sum(status.counts[state] for state in OPEN_STATES), total


def _wait_until_it_ends(app: AppContext, status: CampaignStatusReport,
                        show: Callable[[CampaignStatusReport], None]) -> CampaignStatusReport:
    while True:
        show(status)
        if status.status in WATCH_ENDS:
            return status
        time.sleep(WATCH_POLL_SECONDS)
        with app.db.session() as session:
            status = campaign_status(session, status.id)


def _watch(app: AppContext, status: CampaignStatusReport) -> CampaignStatusReport:
    """A progress bar on a terminal; elsewhere a line whenever the counts change."""
    bar: Any = None
    shown: tuple[str, int, int] | None = None  # the line printed last

    def show(status: CampaignStatusReport) -> None:
        nonlocal bar, shown
        done, total = _done_and_total(status)
        if not sys.stdout.isatty():
            if shown != (status.status.value, done, total):
                shown = (status.status.value, done, total)
                waiting = " (waiting for a worker or send-due)" if status.status is CampaignStatus.SCHEDULED else ""
                click.echo(f"{status.status.value}: {done} of {total} done{waiting}")
            return
        if bar is None and total:
            bar = click.progressbar(length=total, label=f"campaign {status.id}", show_pos=True)
            bar.__enter__()
        if bar is not None:
            bar.update(done - bar.pos)

    try:
        return _wait_until_it_ends(app, status, show)
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
