"""`mailer subscriber export|update|forget`, `mailer audit ls`: the data subject's rights."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import click

from mailer.audit import cli_actor, list_events
from mailer.campaign_report import campaign_status
from mailer.cli import main
from mailer.cli.context import AppContext, echo_json, json_option, pass_app
from mailer.cli.sending import describe_send, describe_status
from mailer.cli.subscribers import subscriber_group
from mailer.cli.terminal import echo_line, terminal_safe
from mailer.delivery.pipeline import send_campaign_now
from mailer.errors import InvalidInputError
from mailer.notices import (
    check_notice,
    copy_example_notice,
    create_notice,
    get_notice,
    list_notices,
    start_notice,
)
from mailer.privacy import (
    export_subscriber,
    forget_subscriber,
    parse_attribute_changes,
    purge_erased_from_disk,
    update_subscriber,
)
from mailer.recipients.confirm import prepare_confirmation, send_confirmation


@subscriber_group.command("export")
@click.argument("email")
@click.option("--reason", default="", help="Why, for the audit trail (e.g. the request's reference).")
@pass_app
def subscriber_export(app: AppContext, email: str, reason: str) -> None:
    """Print, as JSON, everything held about EMAIL (GDPR access and portability).

    Profile, attributes, subscriptions with their consent records, deliveries,
    suppression and audit events. The export itself is recorded in the audit trail.

    \b
    Example:
      $ mailer subscriber export ana@example.com > ana.json
    """
    with app.db.session() as session:
        data = export_subscriber(session, app.config, email, cli_actor(), reason)
    echo_json(data)


@subscriber_group.command("update")
@click.argument("email")
@click.option("--email", "new_email", default=None, metavar="NEW", help="Correct the address.")
@click.option("--name", default=None, help="Correct the display name (\"\" clears it).")
@click.option("--attr", "attrs", multiple=True, metavar="KEY=VALUE",
              help="Set an attribute; KEY= removes it. Repeatable.")
@click.option("--reason", default="", help="Why, for the audit trail.")
@pass_app
def subscriber_update(
    app: AppContext, email: str, new_email: str | None, name: str | None,
    attrs: tuple[str, ...], reason: str,
) -> None:
    """Rectify what is held about EMAIL (GDPR art. 16).

    A new address that has opted out, was erased, or is another subscriber's is refused.

    \b
    Example:
      $ mailer subscriber update ana@exmaple.com --email ana@example.com --attr city=Porto
      updated ana@example.com: email, attribute city
    """
    if new_email is None and name is None and not attrs:
        raise InvalidInputError("nothing to change: give --email, --name or --attr")
    changes = parse_attribute_changes(attrs)
    with app.db.session() as session:
        result = update_subscriber(session, email, cli_actor(), new_email=new_email, name=name,
                                   attributes=changes, reason=reason)
    if not result.changed:
        echo_line(f"{result.email}: nothing changed")
        return
    echo_line(f"updated {result.email}: {', '.join(result.changed)}")
    if result.suppression_carried:
        echo_line(f"  {result.email} stays suppressed: the old address had opted out")


@subscriber_group.command("forget")
@click.argument("email")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--reason", default="", help="Why, for the audit trail (e.g. the request's reference).")
@pass_app
def subscriber_forget(app: AppContext, email: str, yes: bool, reason: str) -> None:
    """Erase EMAIL (GDPR art. 17): profile, attributes, consent, subscriptions, the address
    in deliveries; only a hash stays on the suppression list so it is never mailed again.

    Campaign counts are kept. This cannot be undone. On SQLite the write-ahead log is then
    truncated so no old copy stays on disk (a warning says when another process's open read
    prevents it); on PostgreSQL the touched tables are vacuumed.

    \b
    Example:
      $ mailer subscriber forget ana@example.com --yes
      erased ana@example.com:
        profile: name and 1 attribute
        subscriptions and their consent records: news
        address removed from 3 deliveries (campaign counts kept)
        suppression kept as a hash only: 3f1c9a0be7d2…
        old copies overwritten in the database files
    """
    shown = email.strip()
    if not yes:
        click.confirm(f"Erase everything held about {terminal_safe(shown)}? This cannot be undone.", abort=True)
    with app.db.session() as session:
        report = forget_subscriber(session, shown, cli_actor(), reason)
    echo_line(f"erased {shown}:")
    if report.profile:
        click.echo(f"  profile: name and {report.attributes} attribute{'s' if report.attributes != 1 else ''}")
    if report.subscriptions:
        echo_line(f"  subscriptions and their consent records: {', '.join(report.subscriptions)}")
    if report.deliveries:
        click.echo(f"  address removed from {report.deliveries} deliveries (campaign counts kept)")
    click.echo(f"  suppression {report.suppression} only: {report.address_hash[:12]}…")
    if report.audit_events:
        click.echo(f"  {report.audit_events} earlier audit events now name only the hash")
    purge = purge_erased_from_disk(app.db)
    if purge.done:
        click.echo("  old copies overwritten in the database files" if app.db.is_sqlite
                   else "  deleted rows vacuumed from the tables")
    else:
        click.echo(f"warning: not yet gone from the disk: {purge.reason}", err=True)


@subscriber_group.command("send-confirmation")
@click.argument("email")
@click.option("--list", "list_name", required=True, help="The double opt-in list EMAIL waits to join.")
@pass_app
def subscriber_send_confirmation(app: AppContext, email: str, list_name: str) -> None:
    """Send EMAIL a new confirmation link for a double opt-in list (the old one stays valid
    until it expires).

    \b
    Example:
      $ mailer subscriber send-confirmation ana@example.com --list news
      sent ana@example.com a confirmation link for news
    """
    with app.db.session() as session:
        request = prepare_confirmation(session, app.config, email, list_name)
    send_confirmation(app.config, request)
    echo_line(f"sent {request.email} a confirmation link for {list_name}")


@main.group("audit")
def audit_group() -> None:
    """The audit trail: opt-outs, erasures, exports, suppressions, notices.

    \b
    Example:
      $ mailer audit ls --since 2026-11-01
    """


def _parse_since(raw: str) -> dt.datetime:
    try:
        when = dt.datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInputError(f"--since {raw!r} is not an ISO-8601 date or date and time") from None
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)


@audit_group.command("ls")
@click.option("--since", default=None, metavar="ISO", help="Only events at or after this time (UTC unless given).")
@click.option("--action", default=None, help="Only this action (e.g. unsubscribe, erase, export, notice).")
@json_option
@pass_app
def audit_ls(app: AppContext, since: str | None, action: str | None, as_json: bool) -> None:
    """List audit events, oldest first.

    \b
    Example:
      $ mailer audit ls --since 2026-11-25
      2026-11-25 10:02:11  export   cli:ana   ana@example.com  access request
      2026-11-25 10:05:40  erase    cli:ana   3f1c9a0be7d2…    erasure request (GDPR art. 17)
    """
    when = _parse_since(since) if since else None
    with app.db.session() as session:
        events: list[dict[str, Any]] = [
            {"at": e.at.isoformat(), "action": e.action, "actor": e.actor, "subject": e.subject,
             "reason": e.reason, "detail": e.detail}
            for e in list_events(session, when)
            if action is None or e.action == action
        ]
    if as_json:
        echo_json(events)
        return
    if not events:
        click.echo("no audit events" + (" in that period" if since or action else ""))
        return
    for e in events:
        subject = e["subject"]
        if len(subject) == 64 and "@" not in subject:
            subject = subject[:12] + "…"  # an erased person: only the hash is kept
        # one event, one line: a typed reason with line breaks must not pass for another event
        reason = " ".join(e["reason"].split())
        line = f"{e['at'][:19].replace('T', ' ')}  {e['action']:<11}  {e['actor']:<14}  {subject}  {reason}"
        echo_line(line.rstrip())


@main.group("notice")
def notice_group() -> None:
    """Legal notices (data breach, change of terms): transactional mail, not marketing.

    A notice goes to every subscriber not erased and not hard-bounced, those who
    unsubscribed from marketing included. It carries no ad label and no promotion.

    `notice example breach` copies the shipped example breach notice (HTML and text) to
    fill in; the gate refuses it while any [EDIT: ...] marker is left.

    \b
    Example:
      $ mailer notice example breach
      $ mailer notice create --subject "A security incident affecting your data" \\
          --template breach.html.j2 \\
          --reason "we must tell you about a security incident that affected your data"
      created notice 7 (check it with `mailer notice check 7`)
      $ mailer notice send 7
    """


@notice_group.command("example")
@click.argument("name", default="breach")
@click.option("--dir", "directory", default=".", type=click.Path(file_okay=False, path_type=Path),
              help="Where to write the copy (default: here).")
def notice_example(name: str, directory: Path) -> None:
    """Copy a shipped example notice (default: breach) to fill in before `notice create`.

    \b
    Example:
      $ mailer notice example breach
      wrote breach.html.j2
      wrote breach.txt.j2
      fill in every [EDIT: ...] marker, then `mailer notice create --template breach.html.j2 ...`
    """
    for target in copy_example_notice(name, directory):
        click.echo(f"wrote {target}")
    click.echo(f"fill in every [EDIT: ...] marker, then "
               f"`mailer notice create --template {directory / name}.html.j2 ...`")


@notice_group.command("create")
@click.option("--subject", required=True, help="An honest subject: what the notice is about.")
@click.option("--template", "template", required=True, metavar="PATH|NAME",
              help="A notice .html.j2 file (a sibling .txt.j2 is the text part) or a name under templates/notices/.")
@click.option("--reason", default="", metavar="TEXT",
              help="Why everyone gets it (required); recorded, and it completes the footer's "
                   "\"We send it to you because ...\".")
@click.option("--from", "from_address", default=None, metavar="ADDR", help="From (default: sender.from).")
@pass_app
def notice_create(app: AppContext, subject: str, template: str, reason: str, from_address: str | None) -> None:
    """Create a draft notice and print its id; campaign templates are refused.

    \b
    Example:
      $ mailer notice create --subject "Changes to our terms" --template terms-2027.html.j2 \\
          --reason "our terms of service change on 1 January 2027"
      created notice 7 (check it with `mailer notice check 7`)
    """
    with app.db.session() as session:
        notice = create_notice(session, app.config, subject, template, reason, from_address)
        notice_id = notice.id
    click.echo(f"created notice {notice_id} (check it with `mailer notice check {notice_id}`)")


@notice_group.command("check")
@click.argument("notice_id", type=int)
@pass_app
def notice_check(app: AppContext, notice_id: int) -> None:
    """Run the notice gate: exit 1 listing every problem.

    \b
    Example:
      $ mailer notice check 7
      notice 7 may be sent
    """
    with app.db.session() as session:
        problems = check_notice(app.config, get_notice(session, notice_id))
    if problems:
        for problem in problems:
            echo_line(f"  - {problem}", err=True)
        raise click.ClickException(f"notice {notice_id} may not be sent: {len(problems)} problems")
    click.echo(f"notice {notice_id} may be sent")


@notice_group.command("send")
@click.argument("notice_id", type=int)
@json_option
@pass_app
def notice_send(app: AppContext, notice_id: int, as_json: bool) -> None:
    """Send notice ID now to everyone held (not erased, not hard-bounced), with a summary.

    The send is recorded in the audit trail. Ctrl-C lets messages in flight finish; run it
    again to go on.

    \b
    Example:
      $ mailer notice send 7
      campaign 7: 1302 sent, 0 deferred, 1 failed, 0 suppressed
      status: sent (1302 sent, 1 failed)
    """
    start_notice(app.config, app.db, notice_id)
    report = send_campaign_now(app.config, app.db, notice_id, handle_signals=True)
    with app.db.session() as session:
        status = campaign_status(session, notice_id)
    if as_json:
        echo_json({"send": report.__dict__, "status": status.as_dict()})
        return
    click.echo(describe_send(report).replace("campaign", "notice", 1))
    click.echo(describe_status(status))
    if report.paused_reason:
        raise click.ClickException(f"notice {notice_id} paused: {report.paused_reason}")


@notice_group.command("ls")
@json_option
@pass_app
def notice_ls(app: AppContext, as_json: bool) -> None:
    """List notices with their status and reason.

    \b
    Example:
      $ mailer notice ls
      7  sent   A security incident affecting your data  (we must tell you about ...)
    """
    with app.db.session() as session:
        rows = [
            {"id": n.id, "status": n.status.value, "subject": n.subject, "reason": n.notice_reason,
             "template": n.template_name, "created_at": n.created_at.isoformat(),
             "finished_at": n.finished_at.isoformat() if n.finished_at else None}
            for n in list_notices(session)
        ]
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo("no notices yet")
    for row in rows:
        echo_line(f"{row['id']}  {row['status']:<9}  {row['subject']}  ({row['reason']})")
