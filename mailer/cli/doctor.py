"""`mailer doctor`: whether receivers will trust the mail, checked before the first send."""

from __future__ import annotations

import click

from mailer.cli import main
from mailer.cli.context import AppContext, echo_json, json_option, pass_app
from mailer.cli.terminal import echo_line
from mailer.doctor.checkup import run_doctor
from mailer.doctor.results import Status


@main.command("doctor")
@click.option("--web", is_flag=True, help="Also fetch base_url/healthz, as a recipient's click would.")
@json_option
@pass_app
@click.pass_context
def doctor_command(ctx: click.Context, app: AppContext, web: bool, as_json: bool) -> None:
    """Check SPF, DKIM, DMARC, MX, the unsubscribe URL, the relay and the config.

    Each line is PASS, WARN, FAIL or UNKNOWN (no answer) with what to change.
    Nothing is sent. Exits 1 when any check fails.

    \b
    Example:
      $ mailer doctor
      PASS    spf from     harmonymails.com: one SPF record, passes 203.0.113.5 (1 of 10 look-ups)
      WARN    dmarc        _dmarc.harmonymails.com has p=none, so spoofed mail is not stopped; ...
    """
    findings = run_doctor(app.config, web=web)
    if as_json:
        echo_json({"ok": all(f.status is not Status.FAIL for f in findings),
                   "checks": [f.as_dict() for f in findings]})
    else:
        for finding in findings:
            echo_line(finding.line())
    if any(f.status is Status.FAIL for f in findings):
        ctx.exit(1)
