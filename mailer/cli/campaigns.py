"""`mailer campaign create|ls|check|preview|test` and `mailer dkim keygen`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mailer.campaigns import (
    check_campaign_by_id,
    create_campaign,
    list_campaigns,
    preview_campaign,
    send_test,
)
from mailer.cli import main
from mailer.cli.context import AppContext, echo_json, json_option, pass_app
from mailer.cli.terminal import echo_line, terminal_safe
from mailer.content.compliance import message_parts, parse_message
from mailer.content.dkim import generate_key

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
@json_option
@pass_app
def campaign_create(
    app: AppContext, list_name: str, subject: str, template: str, from_address: str | None, as_json: bool
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
    if as_json:
        echo_json({"id": campaign_id, "problems": created.problems})
    else:
        click.echo(campaign_id)
    for problem in created.problems:
        echo_line(f"warning: {problem}", err=True)
    if created.problems:
        click.echo(f"`mailer campaign check {campaign_id}` refuses to send until these are fixed", err=True)


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
@json_option
@pass_app
@click.pass_context
def campaign_check(ctx: click.Context, app: AppContext, campaign_id: int, as_json: bool) -> None:
    """Run the compliance gate; list every problem and exit 1 when there is any.

    The campaign is rendered for a subscriber of each kind on its list and every
    message is checked: subject, sender, footer in both parts, unsubscribe headers.

    \b
    Example:
      $ mailer campaign check 1
      campaign 1 passes the compliance gate
    """
    with app.db.session() as session:
        problems = check_campaign_by_id(session, app.config, campaign_id)
    if as_json:
        echo_json({"id": campaign_id, "ok": not problems, "problems": problems})
    elif problems:
        click.echo(f"campaign {campaign_id} fails the compliance gate:", err=True)
        for problem in problems:
            echo_line(f"  - {problem}", err=True)
    else:
        click.echo(f"campaign {campaign_id} passes the compliance gate")
    if problems:
        ctx.exit(1)


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


@main.group("dkim")
def dkim_group() -> None:
    """DKIM signing keys.

    \b
    Example:
      $ mailer dkim keygen --selector hm2026
    """


@dkim_group.command("keygen")
@click.option("--selector", required=True, help="The DKIM selector, e.g. hm2026.")
@click.option("--domain", default=None, help="The signing domain (default: dkim.domain, else the sending domain).")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the private key (default: ./dkim-SELECTOR.pem); never overwritten.")
@pass_app
def dkim_keygen(app: AppContext, selector: str, domain: str | None, out: Path | None) -> None:
    """Write a new 2048-bit RSA key and print the DNS TXT record to publish.

    \b
    Example:
      $ mailer dkim keygen --selector hm2026
      wrote dkim-hm2026.pem (keep it secret; mode 0600)
      publish this TXT record, then set [dkim] in mailer.toml:
      hm2026._domainkey.harmonymails.com. IN TXT ( "v=DKIM1; k=rsa; p=MIIBIjAN..." )
    """
    config = app.config
    domain = domain or config.dkim.domain or config.sender.sending_domain
    path = out or Path(f"dkim-{selector}.pem")
    record = generate_key(path, domain, selector)
    click.echo(f"wrote {path} (keep it secret; mode 0600)")
    click.echo("publish this TXT record, then set [dkim] in mailer.toml:")
    click.echo(record.zone_line())
    click.echo("")
    click.echo("[dkim]")
    click.echo(f'domain = "{domain}"')
    click.echo(f'selector = "{selector}"')
    click.echo(f'private_key = "{path.resolve()}"')

