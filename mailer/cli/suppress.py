"""`mailer suppress add|rm|ls`: the addresses never to be mailed."""

from __future__ import annotations

import click

from mailer.audit import cli_actor
from mailer.cli import main
from mailer.cli.context import AppContext, echo_json, json_option, pass_app
from mailer.cli.terminal import echo_line
from mailer.models import SuppressionReason
from mailer.recipients.subscribers import check_email
from mailer.recipients.suppression import AuditNote, list_suppressions, suppress, unsuppress


@main.group("suppress")
def suppress_group() -> None:
    """The suppression list: addresses that are never mailed.

    \b
    Example:
      $ mailer suppress add someone@example.com --reason "asked by phone"
      $ mailer suppress ls
      $ mailer suppress rm ana@example.com --reason "forged spam complaint, see ticket 812"
    """


@suppress_group.command("add")
@click.argument("email")
@click.option("--reason", default="", help="Why, for the record.")
@pass_app
def suppress_add(app: AppContext, email: str, reason: str) -> None:
    """Never mail EMAIL again (any list, any campaign).

    \b
    Example:
      $ mailer suppress add someone@example.com --reason "asked by phone"
      suppressed someone@example.com
    """
    address = check_email(email)
    with app.db.session() as session:
        created = suppress(session, address, SuppressionReason.MANUAL, f"cli: {reason}".strip().rstrip(":"),
                           AuditNote(cli_actor(), reason or "manual"))
    echo_line(f"suppressed {address}" if created else f"{address} was already suppressed")


@suppress_group.command("rm")
@click.argument("email")
@click.option("--reason", required=True, help="Why EMAIL may be mailed again, for the audit trail (required).")
@click.option("--erased", is_flag=True,
              help="The address was erased (only its hash is kept): lift that too.")
@pass_app
def suppress_rm(app: AppContext, email: str, reason: str, erased: bool) -> None:
    """Let EMAIL be mailed again: undo a wrong suppression, with the reason in the audit trail.

    CAN-SPAM forbids mailing someone who opted out unless they have since given their
    consent again: use this to undo a mistake (a forged complaint, a typo in `suppress
    add`) or when the person asked to come back. It lifts only the suppression: lists the
    person left stay left until they sign up again. An erased address keeps only its hash;
    lifting that needs --erased as well, and the audit trail records the hash, not the
    address.

    \b
    Example:
      $ mailer suppress rm ana@example.com --reason "forged spam complaint, see ticket 812"
      ana@example.com may be mailed again (was: complaint)
    """
    address = check_email(email)
    with app.db.session() as session:
        entry = unsuppress(session, address, reason, cli_actor(), erased=erased)
        shown, was = entry.email or address, entry.reason.value
    echo_line(f"{shown} may be mailed again (was: {was})")


@suppress_group.command("ls")
@json_option
@pass_app
def suppress_ls(app: AppContext, as_json: bool) -> None:
    """List suppressed addresses, newest first (erased ones show only their hash).

    \b
    Example:
      $ mailer suppress ls
      2026-11-25 10:00  manual        someone@example.com  cli: asked by phone
    """
    with app.db.session() as session:
        entries: list[dict[str, str]] = [
            {
                "email": e.email or "",
                "address_hash": e.address_hash,
                "reason": e.reason.value,
                "source": e.source,
                "at": e.created_at.isoformat(),
            }
            for e in list_suppressions(session)
        ]
    if as_json:
        echo_json(entries)
        return
    if not entries:
        click.echo("no suppressed addresses")
    for e in entries:
        shown = e["email"] or f"(erased) {e['address_hash'][:16]}…"
        echo_line(f"{e['at'][:16].replace('T', ' ')}  {e['reason']:<12}  {shown}  {e['source']}")
