"""`mailer inbound process|fetch|serve`: bounces, complaints and mailto unsubscribes coming back."""

from __future__ import annotations

import json
import os
import sys
from typing import NoReturn

import click
import sqlalchemy as sa

from mailer.cli import main
from mailer.cli.context import AppContext, echo_json, json_option, pass_app
from mailer.cli.terminal import echo_line
from mailer.inbound.mailboxes import MailboxRun, fetch_mailboxes
from mailer.inbound.process import InboundItem, InboundKind, InboundReport, process_inbound

EX_TEMPFAIL = 75  # sysexits.h: a temporary failure; MTAs retry the delivery
# sysexits.h EX_DATAERR: some messages could not be read; the others were handled. An MTA
# piping the message in returns it to its sender rather than retrying what will never work
EX_DATAERR = 65

# how each kind is counted in the summary, in the order people care about
_LABELS = {
    InboundKind.HARD_BOUNCE: "hard bounces",
    InboundKind.SOFT_BOUNCE: "soft bounces",
    InboundKind.POLICY_BLOCK: "policy blocks",
    InboundKind.DELAYED: "delay warnings",
    InboundKind.COMPLAINT: "complaints",
    InboundKind.UNSUBSCRIBE: "unsubscribes",
    InboundKind.AUTO_REPLY: "auto-replies",
    InboundKind.UNMATCHED: "unmatched",
    InboundKind.OTHER: "other",
    InboundKind.UNVERIFIED_COMPLAINT: "unverified complaints",
    InboundKind.FAILED: "failed",
    InboundKind.ALREADY_PROCESSED: "already processed",
}


@main.group("inbound")
def inbound_group() -> None:
    """Mail coming back: bounces, spam complaints, mailto unsubscribes.

    \b
    Example:
      $ mailer inbound process ~/Maildir/bounces
      $ mailer inbound process - < message.eml
      $ mailer inbound fetch
      $ mailer inbound serve --lmtp 127.0.0.1:2424
    """


@inbound_group.command("process")
@click.argument("source", metavar="PATH|-")
@json_option
@pass_app
def inbound_process(app: AppContext, source: str, as_json: bool) -> None:
    """Sort and act on a Maildir, an mbox, one message file, or one message on stdin (-).

    Bounces saying the mailbox is gone (5.1.x, 5.2.1, 5.4.4) fail the delivery and suppress
    the address; policy blocks (5.7.x: blocklists, DMARC, SPF) fail it and are counted per
    campaign, suppressing nobody (sending.policy_block_pause_share of them pauses the
    campaign); other failures are counted (sending.soft_bounce_limit campaigns suppress; delay
    warnings are not counted, the server is still trying); spam complaints suppress the person
    our own token or return path in the report names, or the address a feedback loop in
    inbound.feedback_loop_senders names; any other complaint is listed as unverified and
    changes nothing. Mail to the
    unsubscribe address unsubscribes; auto-replies are ignored; anything else is left alone
    and listed. A message too large (over 10 MiB), too deeply nested or unreadable is listed
    as failed and the run goes on. A Maildir message handled moves from new/ to cur/, marked
    seen (S); running it again over the same mail changes nothing. An MTA can pipe each
    message in (Postfix alias: `bounces: "|mailer inbound process -"`).

    Exit status: 0 when every message was handled; 65 when some failed (the others were
    handled); 75 when the database is unavailable (an MTA keeps the message and retries;
    in a Maildir it stays in new/).

    \b
    Example:
      $ mailer inbound process ~/Maildir/bounces
      hard bounces: 2
      soft bounces: 1
      policy blocks: 0
      ...
      left alone:
        <question-1@example.com> from carla@example.com "Shipping?": not a bounce, ...
    """
    try:
        report = process_inbound(app.db, app.config, source)
    except sa.exc.OperationalError as exc:
        # piped from an MTA: EX_TEMPFAIL makes it keep the message and try again later,
        # where any other failure would bounce it into the void
        _exit_database_unavailable(exc)
    if as_json:
        echo_json(report.to_dict())
    else:
        _print_inbound_report(report)
    if report.failed:
        click.echo(f"Error: {len(report.failed)} of {len(report.items)} messages could not be processed; "
                   "the others were", err=True)
        sys.exit(EX_DATAERR)


def _print_inbound_report(report: InboundReport) -> None:
    for kind, count in report.counts.items():
        click.echo(f"{_LABELS[kind]}: {count}")
    if report.left_alone:
        click.echo("left alone:")
        for item in report.left_alone:
            echo_line(f"  {item.name} from {item.sender or '(no From)'} "
                      f"{json.dumps(item.subject, ensure_ascii=False)}: {item.note}")
    if report.failed:
        click.echo("failed:")
        for item in report.failed:
            echo_line(f"  {item.name} from {item.sender or '(no From)'}: {item.note}")


def _exit_database_unavailable(exc: sa.exc.OperationalError) -> NoReturn:
    reason = " ".join(str(exc.orig).split())  # one line: MTAs log only the first
    click.echo(f"Error: the database is unavailable, try again later: {reason}", err=True)
    sys.exit(EX_TEMPFAIL)


@inbound_group.command("fetch")
@click.option("--mailbox", "name", metavar="NAME", help="Only the [[inbound.mailboxes]] entry of this name.")
@json_option
@pass_app
def inbound_fetch(app: AppContext, name: str | None, as_json: bool) -> None:
    """Read the bounce mailboxes in [[inbound.mailboxes]] over IMAP or POP3 and act on their mail.

    Each message is handled exactly as `inbound process` handles it. Once its actions are
    committed it is marked done as the mailbox's `done` says: "seen" (IMAP), "move:FOLDER"
    (IMAP) or "delete"; a run stopped in between reads it again and changes nothing twice.
    Messages left for a person (unmatched, other, unverified complaints, failed) are only
    marked seen on IMAP, and stay on a POP3 server. IMAP reads unseen messages only.

    Exit status: 0 when every message was handled; 65 when some failed (the others were
    handled); 75 when the database is unavailable (the message stays unread); 1 when a
    mailbox cannot be read (the others are).

    \b
    Example:
      $ mailer inbound fetch --mailbox bounces
      bounces: 3 messages
      hard bounces: 2
      ...
    """
    try:
        runs = fetch_mailboxes(app.db, app.config, name)
    except sa.exc.OperationalError as exc:
        _exit_database_unavailable(exc)
    if as_json:
        echo_json({"mailboxes": [{"name": run.name, "error": run.error, **run.report.to_dict()} for run in runs]})
    else:
        for run in runs:
            _print_mailbox_run(run)
    _exit_for_runs(runs)


def _print_mailbox_run(run: MailboxRun) -> None:
    click.echo(f"{run.name}: {len(run.report.items)} messages")
    if run.report.items:
        _print_inbound_report(run.report)


def _exit_for_runs(runs: list[MailboxRun]) -> None:
    for run in runs:
        if run.error:
            echo_line(f"Error: {run.error}", err=True)
    failed = sum(len(run.report.failed) for run in runs)
    total = sum(len(run.report.items) for run in runs)
    if failed:
        click.echo(f"Error: {failed} of {total} messages could not be processed; the others were", err=True)
    if any(run.error for run in runs):
        sys.exit(1)
    if failed:
        sys.exit(EX_DATAERR)


def _host_port(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise click.BadParameter(f"must be HOST:PORT such as 127.0.0.1:2424; got {value!r}")
    return host, int(port)


@inbound_group.command("serve")
@click.option("--lmtp", "address", required=True, metavar="HOST:PORT", callback=_host_port,
              help="Listen for LMTP on this address, e.g. 127.0.0.1:2424.")
# parsing and classifying mail is Python work, one core per process: a process per core
@click.option("--workers", default=min(os.cpu_count() or 1, 4), show_default="the cores, at most 4",
              type=click.IntRange(1, 64), help="Processes sharing the socket.")
@pass_app
def inbound_serve(app: AppContext, address: tuple[str, int], workers: int) -> None:
    """Take bounces, complaints and mailto unsubscribes from an MTA over LMTP until SIGTERM.

    Each message is handled exactly as `inbound process` handles it, without starting a
    process per message. Every recipient gets its own reply (RFC 2033): 250 when handled
    (left-alone mail too; it is printed for a person), 554 when the message cannot be read,
    451 while the database is unavailable (at start too), so that the MTA keeps the mail and
    tries again.
    SIGTERM or Ctrl-C stops listening and finishes the messages being handled.
    One line is printed per message. Postfix: `transport_maps` entry `lmtp:inet:127.0.0.1:2424`.

    \b
    Example:
      $ mailer inbound serve --lmtp 127.0.0.1:2424
      listening for LMTP on 127.0.0.1:2424
      hard_bounce <20261125.4Zk5@mail.harmonymails.com> from MAILER-DAEMON@mx.example.net: ...
    """
    from mailer.inbound.lmtp import serve_lmtp

    host, port = address
    try:
        database = app.db
    except sa.exc.OperationalError as exc:
        # started before the database (at boot, say): listen all the same, and let the MTA keep
        # the mail with 451 until the database is back, rather than refuse its connections
        echo_line(f"Warning: the database is unavailable ({' '.join(str(exc.orig).split())}); "
                  "answering 451 until it is back", err=True)
        database = app.open_db_for_upgrade()
    try:
        stopped = serve_lmtp(database, app.config, host, port, workers, on_ready=_announce, report=_print_item)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    if not stopped:
        raise click.ClickException("a worker process died; stopped the others (systemd restarts the service)")


def _announce(where: str) -> None:
    click.echo(f"listening for LMTP on {where}")


def _print_item(item: InboundItem) -> None:
    echo_line(f"{item.kind.value} {item.name} from {item.sender or '(no From)'}: {item.note}")
