"""`mailer subscriber add|import|ls|show|export|update|forget|send-confirmation`."""

from __future__ import annotations

import click

from mailer.audit import cli_actor
from mailer.cli import main
from mailer.cli.context import AppContext, echo_json, json_option, pass_app
from mailer.cli.terminal import echo_line, terminal_safe
from mailer.errors import InvalidInputError
from mailer.privacy import (
    export_subscriber,
    forget_subscriber,
    opted_out_member_ids,
    parse_attribute_changes,
    purge_erased_from_disk,
    update_subscriber,
)
from mailer.recipients.confirm import prepare_confirmation, send_confirmation
from mailer.recipients.importer import ImportReport, import_csv
from mailer.recipients.signup import add_by_hand
from mailer.recipients.subscribers import (
    AddOutcome,
    describe_subscriber,
    iter_list_members,
    parse_attribute_options,
)


@main.group("subscriber")
def subscriber_group() -> None:
    """Subscribers and their lists.

    \b
    Example:
      $ mailer subscriber add ana@example.com --list news --name "Ana Lima"
      $ mailer subscriber import people.csv --list news
    """


@subscriber_group.command("add")
@click.argument("email")
@click.option("--list", "list_name", required=True, help="The list to subscribe to.")
@click.option("--name", default=None, help="Display name.")
@click.option("--attr", "attrs", multiple=True, metavar="KEY=VALUE", help="An attribute; repeatable.")
@pass_app
def subscriber_add(
    app: AppContext, email: str, list_name: str, name: str | None, attrs: tuple[str, ...]
) -> None:
    """Subscribe EMAIL to a list (an opted-out address is refused).

    \b
    Example:
      $ mailer subscriber add ana@example.com --list news --name "Ana Lima" --attr city=Lisbon
      added ana@example.com to news
    """
    added = add_by_hand(app.config, app.db, email, list_name, name=name,
                        attributes=parse_attribute_options(attrs))
    address = added.address
    messages = {
        AddOutcome.ADDED: f"added {address} to {list_name}",
        AddOutcome.UPDATED: f"updated {address} (already on {list_name})",
        AddOutcome.UNCHANGED: f"{address} is already subscribed to {list_name}",
    }
    echo_line(messages[added.outcome])
    if added.confirmation is not None:
        send_confirmation(app.config, added.confirmation)
        echo_line(f"sent {address} a confirmation link; no campaign reaches them until they follow it")


@subscriber_group.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=str))
@click.option("--list", "list_name", required=True, help="The list to import into.")
@click.option("--dry-run", is_flag=True, help="Report what would happen; write nothing.")
@json_option
@pass_app
def subscriber_import(app: AppContext, file: str, list_name: str, dry_run: bool, as_json: bool) -> None:
    """Import subscribers from a CSV file with a header row.

    The header needs an `email` column; `name` is the display name, `consent_at`,
    `consent_ip` and `consent_source` record consent, and any other column is kept as
    an attribute. The import is one transaction: all valid rows, or nothing.

    A row is one line: a quote left open at the end of a line makes that line a bad row,
    not the rest of the file; a line over 1 MiB is a bad row too.

    \b
    Example:
      $ mailer subscriber import people.csv --list news
      people.csv -> news: 3 rows
        added               2
        updated             0
        already subscribed  0
        skipped: suppressed 0
        skipped: unsubscribed 0
        invalid             1
          line 4: invalid email address 'not-an-address': ...
    """
    report = import_csv(app.db, file, list_name, dry_run=dry_run)
    if as_json:
        echo_json(report.as_dict())
    else:
        _print_report(report)


def _print_report(report: ImportReport) -> None:
    heading = f"{report.file} -> {report.list_name}: {report.rows} rows"
    if report.dry_run:
        heading += " (dry run: nothing was written)"
    echo_line(heading)
    for label, value in (
        ("added", report.added),
        ("updated", report.updated),
        ("already subscribed", report.unchanged),
        ("skipped: suppressed", report.suppressed),
        ("skipped: unsubscribed", report.unsubscribed),
        ("invalid", report.invalid),
    ):
        click.echo(f"  {label:<22}{value}")
    for problem in report.problems:
        echo_line(f"    line {problem.line}: {problem.reason}")
    if report.invalid > len(report.problems):
        click.echo(f"    ... and {report.invalid - len(report.problems)} more invalid rows")


@subscriber_group.command("ls")
@click.option("--list", "list_name", required=True, help="The list to show.")
@json_option
@pass_app
def subscriber_ls(app: AppContext, list_name: str, as_json: bool) -> None:
    """List a list's subscribers with their status; opted-out addresses are counted, never listed.

    \b
    Example:
      $ mailer subscriber ls --list news
      ana@example.com  active  Ana Lima
    """
    with app.db.session() as session:
        hidden = opted_out_member_ids(session, list_name)
        members = ((s, sub) for s, sub in iter_list_members(session, list_name) if s.id not in hidden)
        if as_json:
            echo_json([
                {"email": s.email, "name": s.name, "status": sub.status.value,
                 "attributes": s.attributes, "consent_at": sub.consent_at.isoformat()}
                for s, sub in members
            ])
        else:
            count = 0
            for subscriber, subscription in members:
                count += 1
                echo_line(f"{subscriber.email}  {subscription.status.value}  {subscriber.name}".rstrip())
            if count == 0 and not hidden:
                echo_line(f"{list_name} has no subscribers yet", err=True)
    if hidden:
        click.echo(f"{len(hidden)} opted-out members not listed: opted-out addresses are never exported",
                   err=True)


@subscriber_group.command("show")
@click.argument("email")
@json_option
@pass_app
def subscriber_show(app: AppContext, email: str, as_json: bool) -> None:
    """Show one subscriber: profile, lists with consent, suppression.

    \b
    Example:
      $ mailer subscriber show ana@example.com
    """
    with app.db.session() as session:
        data = describe_subscriber(session, email)
    if as_json:
        echo_json(data)
        return
    echo_line(f"{data['email']}  {data['name']}".rstrip())
    for key, value in sorted(data["attributes"].items()):
        echo_line(f"  {key}: {value}")
    for sub in data["subscriptions"]:
        consent = sub["consent"]
        echo_line(f"  list {sub['list']}: {sub['status']} (consent {consent['at'][:19]} via {consent['source']})")
    if data["suppression"]:
        s = data["suppression"]
        echo_line(f"  suppressed: {s['reason']} ({s['source']}, {s['at'][:19]})")


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
