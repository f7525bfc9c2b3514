"""The `mailer` command line: thin commands that parse, call a service function and print."""

from __future__ import annotations

from typing import Any

import click

from mailer import __version__
from mailer.cli.context import AppContext
from mailer.cli.terminal import terminal_safe
from mailer.errors import MailerError


class MailerGroup(click.Group):
    """Turns every MailerError into one line on stderr and exit status 1, here and nowhere else."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MailerError as exc:
            raise click.ClickException(terminal_safe(str(exc))) from exc
        except click.ClickException as exc:
            if type(exc) is not click.ClickException:
                raise  # usage errors quote only what the person typed on this command line
            # a command's own refusal may quote stored text, such as the reply that paused a send
            raise click.ClickException(terminal_safe(exc.format_message())) from exc


@click.group(cls=MailerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config", "config_path", metavar="PATH", envvar="MAILER_CONFIG",
    help="Config file (default: $MAILER_CONFIG, then ./mailer.toml).",
)
@click.version_option(__version__, prog_name="mailer")
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """harmony-mailer: CAN-SPAM compliant newsletters from the command line.

    \b
    Example:
      $ mailer init
      $ mailer list create news --title "Harmony News"
      $ mailer subscriber import people.csv --list news
    """
    ctx.obj = AppContext(config_path)
    ctx.call_on_close(ctx.obj.close)


def _register() -> None:
    # each command group lives in its own module and adds itself to `main`
    from mailer.cli import (  # noqa: F401
        admin,
        campaigns,
        lists,
        privacy,
        recipients,
        sending,
        subscribers,
        suppress,
    )


_register()
