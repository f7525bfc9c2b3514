"""`mailer notice`: legal notices, transactional mail that is not marketing."""

from __future__ import annotations

from pathlib import Path

import click

from mailer.campaign_report import campaign_status
from mailer.cli import main
from mailer.cli.context import AppContext, echo_json, json_option, pass_app
from mailer.cli.reports import describe_send, describe_status
from mailer.cli.terminal import echo_line
from mailer.delivery.pipeline import send_campaign_now
from mailer.notices import (
    check_notice,
    copy_example_notice,
    create_notice,
    get_notice,
    list_notices,
    start_notice,
)


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
