"""Mail that comes back: bounces (RFC 3464), complaints (RFC 5965), mailto unsubscribes, auto-replies."""

from __future__ import annotations

import email
import hashlib
import itertools
import os
from collections import Counter
from dataclasses import dataclass, field
from email.message import Message
from typing import Any, BinaryIO

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from mailer.config import Config
from mailer.db import Database
from mailer.inbound.act import ACTED, act
from mailer.inbound.classify import (
    ANALYSED_BYTES,
    LEFT_ALONE,
    MAX_MIME_PARTS,
    InboundKind,
    analyse,
    header_text,
    parse_head,
    sender_address,
    shape_problem,
    unfold,
)
from mailer.inbound.sources import MAX_MESSAGE_BYTES, RawMessage, read_sources
from mailer.models import InboundMessage

# the names the CLI and callers have always imported from here
__all__ = ["LEFT_ALONE", "InboundItem", "InboundKind", "InboundReport", "process_inbound",
           "process_message", "process_raw_message"]

_MAX_NOTE = 300


@dataclass(frozen=True)
class InboundItem:
    """One message and what became of it."""

    kind: InboundKind
    message_id: str
    sender: str
    subject: str
    note: str
    origin: str = ""  # the file or place in the mbox it was read from

    @property
    def name(self) -> str:
        """How a person finds the message again: its Message-ID, else where it was read from."""
        return self.message_id or self.origin or "(no Message-ID)"

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind.value, "message_id": self.message_id, "from": self.sender,
                "subject": self.subject, "note": self.note, "origin": self.origin}


@dataclass
class InboundReport:
    """Every message read in one run, in order."""

    items: list[InboundItem] = field(default_factory=list)

    @property
    def counts(self) -> dict[InboundKind, int]:
        """A count for every kind, zeros included, in InboundKind order."""
        seen = Counter(item.kind for item in self.items)
        return {kind: seen[kind] for kind in InboundKind}

    @property
    def left_alone(self) -> list[InboundItem]:
        return [item for item in self.items if item.kind in LEFT_ALONE]

    @property
    def failed(self) -> list[InboundItem]:
        return [item for item in self.items if item.kind is InboundKind.FAILED]

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": len(self.items),
            "counts": {kind.value: count for kind, count in self.counts.items()},
            "messages": [item.to_dict() for item in self.items],
        }


def process_inbound(
    database: Database, config: Config, source: str | os.PathLike[str] | BinaryIO
) -> InboundReport:
    """Read a Maildir, an mbox, one message file, or one message from a stream ("-" is stdin).

    Each message is handled on its own, in its own transaction: one that cannot be read is
    reported as failed and the run goes on. A Maildir message handled for good moves to cur/,
    marked seen. Raises InvalidInputError when the source cannot be read, ConfigError when no
    signing key is configured, and SQLAlchemy's OperationalError when the database is
    unavailable (the message it was on stays in new/).
    """
    config.require_secret_keys()
    report = InboundReport()
    for message in read_sources(source):
        report.items.append(process_raw_message(database, config, message))
        message.mark_handled()
    return report


def process_raw_message(database: Database, config: Config, message: RawMessage) -> InboundItem:
    """Handle one message as read; whatever it holds, it comes back as an item, never an exception.

    Only an unavailable database (SQLAlchemy's OperationalError) is raised: the message is
    fine, and the next run should read it again.
    """
    if message.too_large:
        head = parse_head(message.data)
        return _item(head, InboundKind.FAILED, f"too large: over {MAX_MESSAGE_BYTES // (1024 * 1024)} MiB; "
                     "nothing done", message.origin)
    return process_message(database, config, message.data, message.origin)


def process_message(database: Database, config: Config, raw: bytes, origin: str = "") -> InboundItem:
    """Classify one message and act on it; a message acted on before is skipped."""
    head = parse_head(raw)
    problem = shape_problem(raw)
    if problem:
        return _item(head, InboundKind.FAILED, f"{problem}; nothing done", origin)
    fingerprint = _fingerprint(header_text(head, "Message-ID"), raw)
    # before any analysis: a message acted on before costs one query, however it is built
    with database.session() as session:
        if session.scalar(sa.select(InboundMessage.id).where(InboundMessage.fingerprint == fingerprint)):
            return _item(head, InboundKind.ALREADY_PROCESSED, "acted on in an earlier run; nothing done", origin)
    try:
        # the reading and guessing happens outside the transaction: SQLite holds its write lock briefly
        kind, note = _analyse_and_act(database, config, raw, fingerprint)
    except IntegrityError:
        # another run took the same message between our check and our insert
        kind, note = InboundKind.ALREADY_PROCESSED, "acted on by a concurrent run; nothing done"
    except sa.exc.OperationalError:
        raise  # the database is unavailable: the message is fine and must be read again later
    # mail from the internet meets the stdlib parser, flufl.bounce and our own reading: whatever
    # one message makes them do, the opt-outs behind it in the mailbox must still be honoured
    except Exception as exc:
        kind, note = InboundKind.FAILED, f"cannot be read ({type(exc).__name__}: {unfold(exc)}); nothing done"
    return _item(head, kind, note, origin)


def _analyse_and_act(database: Database, config: Config, raw: bytes, fingerprint: str) -> tuple[InboundKind, str]:
    raw = raw[:ANALYSED_BYTES]
    msg = email.message_from_bytes(raw)
    if sum(1 for _part in itertools.islice(msg.walk(), MAX_MIME_PARTS + 1)) > MAX_MIME_PARTS:
        return InboundKind.FAILED, f"more than {MAX_MIME_PARTS} MIME parts; nothing done"
    analysis = analyse(config, msg, raw)
    with database.session() as session:
        if session.scalar(sa.select(InboundMessage.id).where(InboundMessage.fingerprint == fingerprint)):
            return InboundKind.ALREADY_PROCESSED, "acted on in an earlier run; nothing done"
        kind, note = act(session, config, analysis)
        if kind in ACTED:
            session.add(InboundMessage(fingerprint=fingerprint, kind=kind.value))
    return kind, note


def _item(head: Message, kind: InboundKind, note: str, origin: str) -> InboundItem:
    # the address the message was judged by; a From that names no one mailbox is shown as it came,
    # encoded words and all, so a display name never passes for the sender in the run's listing
    sender = sender_address(head) or " ".join(str(head.get("From", "")).split())[:200]
    return InboundItem(kind, header_text(head, "Message-ID"), sender, header_text(head, "Subject"),
                       note[:_MAX_NOTE], origin)


def _fingerprint(message_id: str, raw: bytes) -> str:
    if message_id.strip():
        return hashlib.sha256(b"mid:" + message_id.strip().encode("utf-8", "replace")).hexdigest()
    return hashlib.sha256(b"raw:" + raw).hexdigest()

