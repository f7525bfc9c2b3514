"""`mailer demo`: the whole flow on embedded defaults."""

from __future__ import annotations

from pathlib import Path

import click

from mailer.cli import main


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
