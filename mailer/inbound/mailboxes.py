"""Bounce mailboxes at a provider, read over IMAP or POP3: each message handled as `inbound process` does."""

from __future__ import annotations

import imaplib
import poplib
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mailer.config import Config, MailboxConfig
from mailer.db import Database
from mailer.errors import InvalidInputError, MailerError
from mailer.inbound.classify import LEFT_ALONE, InboundKind
from mailer.inbound.process import InboundReport, process_raw_message
from mailer.inbound.sources import MAX_MESSAGE_BYTES, RawMessage

# a provider's server that stops answering must not hold a cron run for ever
_TIMEOUT = 60.0
# what is read of a message over the size limit: enough for its Message-ID, From and Subject
_HEAD_OF_TOO_LARGE = 64 * 1024
# poplib refuses lines over 2048 octets, and bounces quote HTML with far longer ones: one such
# message would stop every run at the same place
if getattr(poplib, "_MAXLINE", 0) < MAX_MESSAGE_BYTES:
    poplib._MAXLINE = MAX_MESSAGE_BYTES  # type: ignore[attr-defined]
_SIZES_AT_ONCE = 500
# kept where they are for a person to read, never moved or deleted: only marked seen on IMAP
_FOR_A_PERSON = LEFT_ALONE | {InboundKind.FAILED}


class MailboxError(MailerError, ConnectionError):
    """A mailbox cannot be reached, refuses the login, or breaks off mid-run."""


@dataclass
class MailboxRun:
    """One mailbox read: what became of each message, and the error that stopped it, if any."""

    name: str
    report: InboundReport = field(default_factory=InboundReport)
    error: str = ""


class _Session(Protocol):
    def waiting(self) -> Iterator[tuple[Any, RawMessage]]: ...
    def finish(self, key: Any, keep: bool) -> None: ...


def fetch_mailboxes(database: Database, config: Config, only: str | None = None) -> list[MailboxRun]:
    """Read each configured mailbox (or the one named), one message at a time.

    A message is marked done only after what it called for is committed; a run stopped in
    between reads it again, and the record of messages acted on makes it change nothing twice.
    Raises InvalidInputError when `only` names no mailbox (or none is configured), ConfigError without a signing key, and
    SQLAlchemy's OperationalError when the database is unavailable (the message stays unread).
    """
    config.require_secret_keys()
    boxes = config.inbound.mailboxes
    if only is not None:
        boxes = tuple(box for box in boxes if box.name.lower() == only.lower())
        if not boxes:
            known = ", ".join(box.name for box in config.inbound.mailboxes) or "none configured"
            raise InvalidInputError(f"no mailbox named {only!r} in [[inbound.mailboxes]] ({known})")
    elif not boxes:
        raise InvalidInputError("no mailbox to fetch: add an [[inbound.mailboxes]] table to the config")
    return [fetch_mailbox(database, config, box) for box in boxes]


def fetch_mailbox(database: Database, config: Config, box: MailboxConfig) -> MailboxRun:
    """Read one mailbox; a connection that fails is reported in the run, never raised."""
    run = MailboxRun(box.name)
    try:
        with _open(box) as session:
            for key, message in session.waiting():
                item = process_raw_message(database, config, message)
                run.report.items.append(item)
                session.finish(key, keep=item.kind in _FOR_A_PERSON)
    except MailboxError as exc:
        run.error = f"mailbox {box.name}: {exc}"
    except (OSError, imaplib.IMAP4.error, poplib.error_proto) as exc:
        # ssl.SSLError and socket timeouts are OSErrors; IMAPClient's errors are imaplib's
        done = len(run.report.items)
        run.error = f"mailbox {box.name}: {_describe(exc)}" + (f" (after {done} messages)" if done else "")
    return run


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate refused: {exc.verify_message}; set ca_file for a private CA"
    text = exc.args[0] if exc.args else str(exc)
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    return " ".join(str(text or type(exc).__name__).split())[:300]


def _tls_context(box: MailboxConfig) -> ssl.SSLContext:
    if box.ca_file and not Path(box.ca_file).is_file():
        raise MailboxError(f"ca_file {box.ca_file}: no such file")
    try:
        return ssl.create_default_context(cafile=box.ca_file or None)
    except ssl.SSLError as exc:
        raise MailboxError(f"ca_file {box.ca_file}: not a PEM certificate ({exc.reason})") from None


def _password(box: MailboxConfig) -> str:
    if not box.password:
        raise MailboxError(f"no password: set password in its table or {box.password_variable}")
    return box.password


@contextmanager
def _open(box: MailboxConfig) -> Iterator[_Session]:
    context = _tls_context(box)
    password = _password(box)
    if box.location.is_imap:
        with _imap_session(box, context, password) as imap:
            yield imap
    else:
        with _pop3_session(box, context, password) as pop3:
            yield pop3


class _ImapSession:
    """One selected folder; messages are found by UID, so others arriving meanwhile change nothing."""

    def __init__(self, client: Any, box: MailboxConfig) -> None:
        self.client = client
        self.box = box

    def waiting(self) -> Iterator[tuple[int, RawMessage]]:
        # what no run has handled yet; BODY.PEEK below leaves the flag alone until we are done
        uids = sorted(self.client.search(["UNSEEN"]))
        # sizes a batch at a time: a command naming every UID of a full mailbox is too long a line
        for start in range(0, len(uids), _SIZES_AT_ONCE):
            batch = uids[start:start + _SIZES_AT_ONCE]
            sizes = self.client.fetch(batch, ["RFC822.SIZE"])
            for uid in batch:
                too_large = sizes.get(uid, {}).get(b"RFC822.SIZE", 0) > MAX_MESSAGE_BYTES
                message = self._read(uid, too_large)
                if message is not None:
                    yield uid, message

    def _read(self, uid: int, too_large: bool) -> RawMessage | None:
        part = f"BODY.PEEK[]<0.{_HEAD_OF_TOO_LARGE}>" if too_large else "BODY.PEEK[]"
        found = self.client.fetch([uid], [part]).get(uid)
        if found is None:
            return None  # deleted by someone else meanwhile
        data = next((value for name, value in found.items() if name.startswith(b"BODY[")), b"")
        return RawMessage(f"{self.box.name} UID {uid}", data or b"", too_large)

    def finish(self, key: int, keep: bool) -> None:
        if keep or self.box.done == "seen":
            self.client.add_flags([key], [b"\\Seen"])
        elif self.box.move_to:
            self.client.add_flags([key], [b"\\Seen"])
            self.client.move([key], self.box.move_to)
        else:
            self.client.add_flags([key], [b"\\Deleted"])
            self.client.uid_expunge([key])


@contextmanager
def _imap_session(box: MailboxConfig, context: ssl.SSLContext, password: str) -> Iterator[_ImapSession]:
    # imported here: an MTA piping each message into `inbound process` does not pay for it
    from imapclient import IMAPClient

    where = box.location
    client = IMAPClient(where.host, port=where.port, ssl=where.implicit_tls, ssl_context=context,
                        timeout=_TIMEOUT)
    try:
        if not where.implicit_tls:
            _imap_starttls(client, box, context)
        _login(lambda: client.login(where.user, password), where.user)
        if not client.folder_exists(where.folder):
            raise MailboxError(f"no folder {where.folder!r} on {where.host}")
        if box.move_to and not client.folder_exists(box.move_to):
            client.create_folder(box.move_to)
        client.select_folder(where.folder)
        yield _ImapSession(client, box)
    finally:
        _close_quietly(client.logout)


def _imap_starttls(client: Any, box: MailboxConfig, context: ssl.SSLContext) -> None:
    if b"STARTTLS" in client.capabilities():
        client.starttls(context)
    elif not box.location.is_loopback:
        # the password would cross the network in the clear
        raise MailboxError(f"{box.location.host} does not offer STARTTLS; use imaps:// instead")


class _Pop3Session:
    """POP3 deletes only when the session ends well: a run that dies deletes nothing."""

    def __init__(self, client: poplib.POP3, box: MailboxConfig) -> None:
        self.client = client
        self.box = box

    def waiting(self) -> Iterator[tuple[int, RawMessage]]:
        _response, listing, _octets = self.client.list()
        for line in listing:
            number, _space, size = line.decode("ascii").partition(" ")
            if int(size) > MAX_MESSAGE_BYTES:
                data = b"\r\n".join(self.client.top(int(number), 0)[1])[:_HEAD_OF_TOO_LARGE]
                yield int(number), RawMessage(f"{self.box.name} message {number}", data, True)
                continue
            lines = self.client.retr(int(number))[1]
            yield int(number), RawMessage(f"{self.box.name} message {number}", b"\r\n".join(lines) + b"\r\n")

    def finish(self, key: int, keep: bool) -> None:
        if not keep:
            self.client.dele(key)


@contextmanager
def _pop3_session(box: MailboxConfig, context: ssl.SSLContext, password: str) -> Iterator[_Pop3Session]:
    where = box.location
    client: poplib.POP3
    if where.implicit_tls:
        client = poplib.POP3_SSL(where.host, where.port, timeout=_TIMEOUT, context=context)
    else:
        client = poplib.POP3(where.host, where.port, timeout=_TIMEOUT)
    try:
        if not where.implicit_tls:
            _pop3_stls(client, box, context)
        _login(lambda: (client.user(where.user), client.pass_(password)), where.user)
        yield _Pop3Session(client, box)
    finally:
        # the deletions take effect now, each for a message whose actions are committed
        try:
            client.quit()
        except (OSError, poplib.error_proto):
            _close_quietly(client.close)


def _pop3_stls(client: poplib.POP3, box: MailboxConfig, context: ssl.SSLContext) -> None:
    try:
        offered = "STLS" in client.capa()
    except poplib.error_proto:
        offered = False
    if offered:
        client.stls(context)
    elif not box.location.is_loopback:
        raise MailboxError(f"{box.location.host} does not offer STLS; use pop3s:// instead")


def _login(login: Callable[[], object], user: str) -> None:
    try:
        login()
    except (imaplib.IMAP4.error, poplib.error_proto) as exc:
        raise MailboxError(f"login refused for {user}: {_describe(exc)}") from None


def _close_quietly(close: Any) -> None:
    # the connection is gone already; nothing is lost with it
    with suppress(OSError, imaplib.IMAP4.error, poplib.error_proto):
        close()
