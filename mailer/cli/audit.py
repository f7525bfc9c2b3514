"""`mailer audit ls`: the audit trail."""

from __future__ import annotations

import datetime as dt
from typing import Any

import click

from mailer.audit import list_events
from mailer.cli import main
from mailer.cli.context import AppContext, echo_json, json_option, pass_app
from mailer.cli.terminal import echo_line
from mailer.errors import InvalidInputError


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
    # columns as wide as this listing needs: `campaign_cancelled` is longer than `export`
    action_width = max(len(e["action"]) for e in events)
    actor_width = max(len(e["actor"]) for e in events)
    for e in events:
        subject = e["subject"]
        if len(subject) == 64 and "@" not in subject:
            subject = subject[:12] + "…"  # an erased person: only the hash is kept
        # one event, one line: a typed reason with line breaks must not pass for another event
        reason = " ".join(e["reason"].split())
        line = (f"{e['at'][:19].replace('T', ' ')}  {e['action']:<{action_width}}  "
                f"{e['actor']:<{actor_width}}  {subject}  {reason}")
        echo_line(line.rstrip())
