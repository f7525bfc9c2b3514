"""The `mailer` command line: thin commands that parse, call a service function and print."""

from __future__ import annotations

import importlib
from typing import Any

import click

from mailer import __version__
from mailer.cli.context import AppContext
from mailer.cli.params import TextCheckedCommand, TextCheckedGroup
from mailer.cli.terminal import terminal_safe
from mailer.errors import DatabaseUnavailable, MailerError

# every top-level command: the modules that define it, imported when it runs, and its one-line
# help, so that `mailer --help` and an MTA's `inbound process -` do not pay for SQLAlchemy, Flask,
# aiosmtplib and Jinja2 all at once (tests/test_help.py checks these against the commands)
COMMANDS: dict[str, tuple[tuple[str, ...], str]] = {
    "audit": (("mailer.cli.audit",),
              "The audit trail: opt-outs, erasures, exports, suppressions, notices."),
    "campaign": (("mailer.cli.campaign",),
                 "Campaigns: write, check, send and follow them."),
    "db": (("mailer.cli.admin",), "Database maintenance."),
    "demo": (("mailer.cli.demo",),
             "The whole flow on embedded defaults: list, subscribers, a campaign sent over real SMTP."),
    "dkim": (("mailer.cli.dkim",), "DKIM signing keys."),
    "doctor": (("mailer.cli.doctor",),
               "Check SPF, DKIM, DMARC, MX, the unsubscribe URL, the relay and the config."),
    "inbound": (("mailer.cli.inbound",),
                "Mail coming back: bounces, spam complaints, mailto unsubscribes."),
    "init": (("mailer.cli.admin",),
             "Create mailer.toml (if absent) with a fresh signing key, and the database."),
    "list": (("mailer.cli.list",), "Mailing lists."),
    "notice": (("mailer.cli.notice",),
               "Legal notices (data breach, change of terms): transactional mail, not marketing."),
    "send-due": (("mailer.cli.sending",),
                 "Send what is due: scheduled campaigns whose time has come and deferred retries."),
    "serve": (("mailer.cli.serve",), "Run the subscribers' web app under waitress until interrupted."),
    "subscriber": (("mailer.cli.subscriber",), "Subscribers and their lists."),
    "suppress": (("mailer.cli.suppress",), "The suppression list: addresses that are never mailed."),
    "worker": (("mailer.cli.sending",),
               "Keep sending what is due until SIGTERM; run several, on several machines, on PostgreSQL."),
}


class _TryLater(click.ClickException):
    """A failure that passes by itself, such as a database out of reach: sysexits.h EX_TEMPFAIL,
    so that systemd or cron can tell it from a refusal."""

    exit_code = 75


class MailerGroup(click.Group):
    """Loads each command when it is used, and turns every MailerError into one line on stderr
    and exit status 1 (75 for DatabaseUnavailable), here and nowhere else."""

    # every command made with @main.command() or @main.group() refuses text that is not UTF-8
    command_class = TextCheckedCommand
    group_class = TextCheckedGroup

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(COMMANDS) | set(self.commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in COMMANDS:
            for module in COMMANDS[cmd_name][0]:
                importlib.import_module(module)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(len(name) for name in names)
        # a stand-in command shortens each line exactly as click would for the loaded one
        rows = [(name, click.Command(name, help=COMMANDS[name][1]).get_short_help_str(limit)) for name in names]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MailerError as exc:
            error = _TryLater if isinstance(exc, DatabaseUnavailable) else click.ClickException
            raise error(terminal_safe(str(exc))) from exc
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
