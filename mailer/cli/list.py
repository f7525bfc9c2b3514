"""`mailer list create|form|ls`."""

from __future__ import annotations

import click

from mailer.cli import main
from mailer.cli.context import AppContext, echo_json, json_option, pass_app
from mailer.cli.terminal import echo_line, terminal_safe
from mailer.recipients.lists import create_list, summarize_lists
from mailer.recipients.web_signup import embed_snippet


@main.group("list")
def list_group() -> None:
    """Mailing lists.

    \b
    Example:
      $ mailer list create news --title "Harmony News"
      $ mailer list ls
      $ mailer list form news > signup-form.html
    """


@list_group.command("create")
@click.argument("name")
@click.option("--title", default="", help="Human-readable title shown to recipients.")
@click.option("--double-opt-in", is_flag=True, help="New subscribers must confirm by email.")
@click.option("--consent", "consent_text", default="",
              help="The words the sign-up form shows beside its tick box (default: ours, naming the list).")
@pass_app
def list_create(app: AppContext, name: str, title: str, double_opt_in: bool, consent_text: str) -> None:
    """Create a mailing list called NAME.

    Sign-ups from the web are always confirmed by email, whatever --double-opt-in says.

    \b
    Example:
      $ mailer list create news --title "Harmony News"
      created list news
    """
    with app.db.session() as session:
        create_list(session, name, title, double_opt_in, consent_text)
    click.echo(f"created list {name}")


@list_group.command("form")
@click.argument("name")
@pass_app
def list_form(app: AppContext, name: str) -> None:
    """Print the HTML sign-up form for list NAME, to paste into the company's site.

    It posts to `mailer serve` at [unsubscribe] base_url and works without script; every
    sign-up is confirmed by email before anything else is sent.

    \b
    Example:
      $ mailer list form news > signup-form.html
    """
    with app.db.session() as session:
        snippet = embed_snippet(session, app.config, name)
    click.echo(snippet, nl=False)


@list_group.command("ls")
@json_option
@pass_app
def list_ls(app: AppContext, as_json: bool) -> None:
    """Show every list with its subscriber counts.

    ACTIVE counts the people a campaign to the list would reach; SUPPRESSED, those still
    subscribed whose address opted out everywhere, bounced or complained.

    \b
    Example:
      $ mailer list ls
      NAME  ACTIVE  UNCONFIRMED  UNSUBSCRIBED  SUPPRESSED  TITLE
      news       2            0             0           1  Harmony News
    """
    with app.db.session() as session:
        summaries = summarize_lists(session)
    if as_json:
        echo_json([s.__dict__ for s in summaries])
        return
    if not summaries:
        click.echo("no lists yet; create one with `mailer list create NAME`")
        return
    width = max(4, *(len(terminal_safe(s.name)) for s in summaries))
    click.echo(f"{'NAME':<{width}}  ACTIVE  UNCONFIRMED  UNSUBSCRIBED  SUPPRESSED  TITLE")
    for s in summaries:
        doi = " (double opt-in)" if s.double_opt_in else ""
        echo_line(
            f"{terminal_safe(s.name):<{width}}  {s.active:>6}  {s.unconfirmed:>11}  {s.unsubscribed:>12}  {s.suppressed:>10}"
            f"  {s.title}{doi}"
        )
