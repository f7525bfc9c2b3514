"""Mail that comes back: bounces (RFC 3464), complaints (RFC 5965), mailto unsubscribes, auto-replies."""

from __future__ import annotations

import email
import enum
import hashlib
import itertools
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.header import decode_header, make_header
from email.message import Message
from email.parser import BytesHeaderParser, HeaderParser
from email.utils import getaddresses
from typing import Any, BinaryIO
from urllib.parse import unquote

import sqlalchemy as sa
from flufl.bounce import all_failures
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mailer.audit import record_event
from mailer.bounce_class import MAX_TEXT, BounceClass, classify, reply_code
from mailer.config import Config
from mailer.db import Database, address_hash, normalize_email
from mailer.errors import TokenError
from mailer.inbound.feedback_loops import is_trusted_feedback_loop
from mailer.inbound.sources import MAX_MESSAGE_BYTES, RawMessage, read_sources
from mailer.models import (
    BounceEvent,
    BounceKind,
    Delivery,
    DeliveryState,
    InboundMessage,
    Subscriber,
    SuppressionReason,
    utcnow,
)
from mailer.plus_tag import read_unsubscribe_tag
from mailer.policy_blocks import PolicyPauseRule, pause_for_policy_blocks, record_policy_block
from mailer.recipients.optout import OptOutSource, mask_email, unsubscribe
from mailer.recipients.subscribers import find_subscriber
from mailer.recipients.suppression import suppress_address
from mailer.tokens import UnsubscribeClaim, read_unsubscribe_token
from mailer.verp import parse_return_path

# flufl.bounce logs a traceback for every message a detector chokes on; _heuristic_bounce
# already treats that message as no bounce, so the log would only alarm whoever reads stderr
logging.getLogger("flufl.bounce").addHandler(logging.NullHandler())
logging.getLogger("flufl.bounce").propagate = False


class InboundKind(enum.StrEnum):
    """What one inbound message turned out to be, and so what was done with it."""

    HARD_BOUNCE = "hard_bounce"  # the mailbox is gone (5.1.x, 5.2.1, 5.4.4): delivery failed, address suppressed
    SOFT_BOUNCE = "soft_bounce"  # other failure: counted; suppressed at sending.soft_bounce_limit
    POLICY_BLOCK = "policy_block"  # refused by policy (5.7.x): delivery failed, counted per campaign, kept
    DELAYED = "delayed"  # a delay warning: the server is still trying, nothing counted
    COMPLAINT = "complaint"  # ARF abuse report: address suppressed
    UNSUBSCRIBE = "unsubscribe"  # mail to the unsubscribe address: opted out like the web page
    AUTO_REPLY = "auto_reply"  # vacation and other automatic replies: ignored
    UNMATCHED = "unmatched"  # a bounce, report or request naming nobody we mailed: left alone
    OTHER = "other"  # anything else: left alone, listed for a person to read
    UNVERIFIED_COMPLAINT = "unverified_complaint"  # abuse report anyone could have forged: listed only
    FAILED = "failed"  # too large, too deep or unreadable: nothing done, listed; the run goes on
    ALREADY_PROCESSED = "already_processed"  # acted on in an earlier run: nothing done again


# the kinds that change the database (and delay warnings, read once like the bounces they
# may become); their messages are remembered so a rerun skips them
_ACTED = frozenset({InboundKind.HARD_BOUNCE, InboundKind.SOFT_BOUNCE, InboundKind.POLICY_BLOCK,
                    InboundKind.DELAYED, InboundKind.COMPLAINT, InboundKind.UNSUBSCRIBE})
# what a person should look at after a run
LEFT_ALONE = frozenset({InboundKind.UNMATCHED, InboundKind.OTHER, InboundKind.UNVERIFIED_COMPLAINT})

# delivery states in which the relay had the message, so a later bounce means it failed
_BOUNCEABLE_STATES = frozenset({DeliveryState.SENT, DeliveryState.DEFERRED, DeliveryState.SENDING,
                                DeliveryState.IN_DOUBT})

# itsdangerous URL-safe tokens are base64url payload "." base64url signature (43 chars for sha256)
_TOKEN = re.compile(r"(?<![A-Za-z0-9_\-.])([A-Za-z0-9_\-]{2,200}\.[A-Za-z0-9_\-]{40,100})(?![A-Za-z0-9_\-])")
# more candidates than this in one message is noise, not a person asking to leave
_MAX_TOKEN_CANDIDATES = 50
# a reply code as servers write it ("550 ", "550-", "554:"), not the first octet of "[203.0.113.9]"
_SMTP_CODE = re.compile(r"(?<![\w.])([245][0-9][0-9])(?=[ :-]|$)", re.MULTILINE)
_DAEMON_LOCALPARTS = frozenset({"mailer-daemon", "mailer_daemon", "mail-daemon", "postmaster",
                                "mail-delivery-subsystem", "mdaemon", "mailerdaemon"})
# the subjects Outlook and the big webmails give out-of-office replies, in the languages we see most
_AUTO_REPLY_SUBJECT = re.compile(
    r"^\s*(auto(matic)?[ _-]?(reply|response|antwort)|auto:|out of (the )?office|on vacation|"
    r"vacation (reply|notice)|abwesenheit|automatische antwort|automatisch antwoord|autosvar|"
    r"automatisk svar|automaattinen vastaus|automatyczna odpowied|resposta automática|"
    r"réponse automatique|risposta automatica|respuesta automática)",
    re.IGNORECASE,
)
_RECIPIENT_HEADERS = ("Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To", "To", "Cc")
_MAX_NOTE = 300

# Bounds on what one message from the internet may cost, checked before the parts they guard.
# The parts a decision needs (the report, the status blocks, the returned headers) come first in
# every bounce and complaint we know, and all of it fits in far less than this
_ANALYSED_BYTES = 1024 * 1024
# a header section bigger than this is no bounce, complaint or request (1.4 MB subjects exist)
_MAX_HEADER_BYTES = 256 * 1024
# one header as decoded: encoded words cost time each, and no address list or subject needs more
_MAX_HEADER_CHARS = 4000
# the parser recurses once per nested message or multipart, and the stack ends near a thousand
_MAX_MIME_CONTAINERS = 32
_MAX_MIME_PARTS = 500
# flufl.bounce tries many patterns on every line, some slow on hostile text; a bounce's failure
# text is always near the top
_HEURISTIC_BYTES = 64 * 1024
# more nested "(" than this in an address header is an attack on the stdlib's recursive parser
_MAX_COMMENT_PARENS = 16
# a line opening a container: "Content-Type: multipart/..." or "message/...", maybe folded
_CONTAINER_LINE = re.compile(rb"^content-type:[ \t]*(?:\r?\n[ \t]+)*(?:multipart|message)/",
                             re.IGNORECASE | re.MULTILINE)


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
        head = _parse_head(message.data)
        return _item(head, InboundKind.FAILED, f"too large: over {MAX_MESSAGE_BYTES // (1024 * 1024)} MiB; "
                     "nothing done", message.origin)
    return process_message(database, config, message.data, message.origin)


def process_message(database: Database, config: Config, raw: bytes, origin: str = "") -> InboundItem:
    """Classify one message and act on it; a message acted on before is skipped."""
    head = _parse_head(raw)
    problem = _shape_problem(raw)
    if problem:
        return _item(head, InboundKind.FAILED, f"{problem}; nothing done", origin)
    fingerprint = _fingerprint(_header_text(head, "Message-ID"), raw)
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
        kind, note = InboundKind.FAILED, f"cannot be read ({type(exc).__name__}: {_unfold(exc)}); nothing done"
    return _item(head, kind, note, origin)


def _analyse_and_act(database: Database, config: Config, raw: bytes, fingerprint: str) -> tuple[InboundKind, str]:
    raw = raw[:_ANALYSED_BYTES]
    msg = email.message_from_bytes(raw)
    if sum(1 for _part in itertools.islice(msg.walk(), _MAX_MIME_PARTS + 1)) > _MAX_MIME_PARTS:
        return InboundKind.FAILED, f"more than {_MAX_MIME_PARTS} MIME parts; nothing done"
    analysis = analyse(config, msg, raw)
    with database.session() as session:
        if session.scalar(sa.select(InboundMessage.id).where(InboundMessage.fingerprint == fingerprint)):
            return InboundKind.ALREADY_PROCESSED, "acted on in an earlier run; nothing done"
        kind, note = _act(session, config, analysis)
        if kind in _ACTED:
            session.add(InboundMessage(fingerprint=fingerprint, kind=kind.value))
    return kind, note


def _parse_head(raw: bytes) -> Message:
    """The top-level headers only: cheap, bounded, and never deeper than one level."""
    return BytesHeaderParser().parsebytes(raw[:_MAX_HEADER_BYTES])


def _item(head: Message, kind: InboundKind, note: str, origin: str) -> InboundItem:
    sender = next(iter(_addresses([_header_text(head, "From")])), "")
    return InboundItem(kind, _header_text(head, "Message-ID"), sender, _header_text(head, "Subject"),
                       note[:_MAX_NOTE], origin)


def _shape_problem(raw: bytes) -> str:
    """Why a message is too big or too deep to parse safely, or ""."""
    if len(raw) > MAX_MESSAGE_BYTES:
        return f"too large: over {MAX_MESSAGE_BYTES // (1024 * 1024)} MiB"
    end = re.search(rb"\r?\n\r?\n", raw[:_MAX_HEADER_BYTES + 4])
    if end is None and len(raw) > _MAX_HEADER_BYTES:
        return f"headers longer than {_MAX_HEADER_BYTES // 1024} KiB"
    containers = itertools.islice(_CONTAINER_LINE.finditer(raw, 0, _ANALYSED_BYTES), _MAX_MIME_CONTAINERS + 1)
    if sum(1 for _match in containers) > _MAX_MIME_CONTAINERS:
        return f"more than {_MAX_MIME_CONTAINERS} nested messages or multiparts"
    return ""


def _fingerprint(message_id: str, raw: bytes) -> str:
    if message_id.strip():
        return hashlib.sha256(b"mid:" + message_id.strip().encode("utf-8", "replace")).hexdigest()
    return hashlib.sha256(b"raw:" + raw).hexdigest()


# --- reading a message: no database here -------------------------------------------------------


@dataclass(frozen=True)
class RecipientStatus:
    """One per-recipient block of a delivery-status report (RFC 3464 section 2.3)."""

    recipient: str
    original_recipient: str
    action: str
    status: str
    diagnostic: str

    @property
    def failed(self) -> bool:
        # opensmtpd writes the non-standard "error"
        return self.action.startswith(("failed", "error"))

    def bounce_class(self, notification: str = "") -> BounceClass | None:
        """What the report says about the address (mailer.bounce_class); None when nothing failed.

        `notification` is the report's text for people, read when there is no Diagnostic-Code
        (Exim writes "5.0.0" and puts "No Such User Here" only there)."""
        if self.action.startswith("delayed"):
            return BounceClass.TRANSIENT
        if not self.failed:
            return None
        text = _diagnostic_text(self.diagnostic) if self.diagnostic.strip() else notification
        found = classify(reply_code(self.diagnostic), self.status, text)
        # "failed" with a 2.x.x status contradicts itself; the mailbox may well be fine
        return BounceClass.TRANSIENT if found is BounceClass.DELIVERED else found


@dataclass
class Analysis:
    """What a message is and whom it names, found without touching the database."""

    kind: InboundKind
    note: str = ""
    status: str = ""  # enhanced status code of a bounce
    diagnostic: str = ""
    delivery_ids: list[int] = field(default_factory=list)  # from VERP addresses, most trusted first
    claims: list[UnsubscribeClaim] = field(default_factory=list)  # from signed tokens
    named_addresses: list[str] = field(default_factory=list)  # recipients a report names
    from_address: str = ""
    user_agent: str = ""  # the software that sent a complaint
    still_trying: bool = False  # only `Action: delayed`: the message may yet be delivered
    from_feedback_loop: bool = False  # a complaint from a sender in inbound.feedback_loop_senders
    permanent: bool = False  # the delivery failed for good, whatever it means for the address


def analyse(config: Config, msg: Message, raw: bytes) -> Analysis:
    """Sort a message: complaint, bounce, auto-reply, unsubscribe request, or other."""
    from_address = next(iter(_addresses([_header_text(msg, "From")])), "")
    report = feedback_report(msg)
    if report is not None:
        return _analyse_complaint(config, msg, raw, report, from_address)
    statuses = delivery_statuses(msg)
    if statuses:
        return _analyse_dsn(config, msg, raw, statuses)
    if _looks_like_daemon(msg, from_address):
        found = _heuristic_bounce(config, msg, raw)
        if found is not None:
            return found
    if is_auto_reply(msg):
        return Analysis(InboundKind.AUTO_REPLY, note="automatic reply; ignored", from_address=from_address)
    if _is_unsubscribe_request(config, msg):
        return Analysis(InboundKind.UNSUBSCRIBE, claims=_claims_for_mailto(config, msg),
                        from_address=from_address)
    return Analysis(InboundKind.OTHER, note="not a bounce, complaint or unsubscribe request",
                    from_address=from_address)


def feedback_report(msg: Message) -> Message | None:
    """The machine-readable part of an ARF report (RFC 5965), or None."""
    for part in msg.walk():
        if part.get_content_type() == "message/feedback-report":
            return HeaderParser().parsestr(_part_text(part))
    return None


def delivery_statuses(msg: Message) -> list[RecipientStatus]:
    """The per-recipient blocks of every delivery-status part (RFC 3464, and RFC 6533's global)."""
    found: list[RecipientStatus] = []
    for part in msg.walk():
        if part.get_content_type() not in ("message/delivery-status", "message/global-delivery-status"):
            continue
        for block in re.split(r"\r?\n\s*\r?\n", _part_text(part)):
            fields = HeaderParser().parsestr(block.strip() + "\n")
            action = _unfold(fields.get("Action", "")).lower()
            original = _dsn_address(fields.get("Original-Recipient", ""))
            recipient = _dsn_address(fields.get("Final-Recipient", "")) or original
            if not action or not recipient:
                continue  # the per-message block, or noise
            found.append(RecipientStatus(
                recipient=recipient,
                original_recipient=original,
                action=action,
                status=_unfold(fields.get("Status", "")).split()[0] if fields.get("Status") else "",
                diagnostic=_unfold(fields.get("Diagnostic-Code", "")),
            ))
    return found


def _dsn_address(field_value: str) -> str:
    """`rfc822; <user@example.com>` -> `user@example.com`."""
    value = _unfold(field_value)
    return (value.partition(";")[2] if ";" in value else value).strip().strip("<>")


def is_auto_reply(msg: Message) -> bool:
    """RFC 3834 Auto-Submitted other than "no", the older vacation headers, or a vacation subject."""
    auto_submitted = _header_text(msg, "Auto-Submitted").strip().lower()
    if auto_submitted and not auto_submitted.startswith("no"):
        return True
    if any(msg.get(name) for name in ("X-Autoreply", "X-Autorespond", "X-Autoresponse", "X-Vacation",
                                      "X-AutoReply-From", "X-Mail-Autoreply")):
        return True
    # Exchange marks its out-of-office replies so, whatever their language, with or without
    # Auto-Submitted; a person's own mail from Outlook carries no such header
    suppress = _header_text(msg, "X-Auto-Response-Suppress").lower()
    if suppress and suppress != "none":
        return True
    precedence = (_header_text(msg, "Precedence") + " " + _header_text(msg, "X-Precedence")).lower()
    if "auto_reply" in precedence or "auto-reply" in precedence:
        return True
    if "autoresponder" in _header_text(msg, "X-POST-MessageClass").lower():
        return True
    return bool(_AUTO_REPLY_SUBJECT.match(_header_text(msg, "Subject")))


def _analyse_dsn(config: Config, msg: Message, raw: bytes, statuses: list[RecipientStatus]) -> Analysis:
    notification = _body_text(msg)[:MAX_TEXT]
    classes = [s.bounce_class(notification) for s in statuses]
    # one report may list several recipients: the gravest class decides for the delivery
    found = min(classes, key=_GRAVITY.index)
    chosen = statuses[classes.index(found)]
    if found is None:
        return Analysis(InboundKind.OTHER, note=f"delivery report without a failure ({chosen.action})")
    transient = [s for s, c in zip(statuses, classes, strict=True) if c is BounceClass.TRANSIENT]
    return Analysis(
        _KIND_OF_CLASS[found], status=chosen.status, diagnostic=chosen.diagnostic,
        delivery_ids=_verp_deliveries(config, msg, raw), claims=_claims_in(config, [raw_text(raw)]),
        named_addresses=[a for s in statuses for a in (s.recipient, s.original_recipient) if a],
        still_trying=found is BounceClass.TRANSIENT and all(s.action.startswith("delayed") for s in transient),
        permanent=found.permanent,
    )


# the order in which one report's recipients decide what it was
_GRAVITY: tuple[BounceClass | None, ...] = (BounceClass.MAILBOX_GONE, BounceClass.POLICY_BLOCK, BounceClass.FAILED,
                                            BounceClass.TRANSIENT, BounceClass.DELIVERED, None)
_KIND_OF_CLASS = {
    BounceClass.MAILBOX_GONE: InboundKind.HARD_BOUNCE,
    BounceClass.POLICY_BLOCK: InboundKind.POLICY_BLOCK,
    # a permanent failure that is not about the mailbox (5.3.x, 5.5.x, 5.6.x...) fails the
    # delivery and counts like a transient one: only the same failure in several campaigns suppresses
    BounceClass.FAILED: InboundKind.SOFT_BOUNCE,
    BounceClass.TRANSIENT: InboundKind.SOFT_BOUNCE,
    BounceClass.DELIVERED: InboundKind.OTHER,
}


def _diagnostic_text(diagnostic: str) -> str:
    """`smtp; 550 5.7.1 blocked` -> `5.7.1 blocked`: the server's words after the type and the reply code."""
    text = diagnostic.partition(";")[2] if ";" in diagnostic[:20] else diagnostic
    return re.sub(r"^\s*[245][0-9][0-9][ -]?", "", text)


def _heuristic_bounce(config: Config, msg: Message, raw: bytes) -> Analysis | None:
    """A bounce without a delivery-status part (classic Exim, Yahoo's "failure notice"...)."""
    try:
        temporary, permanent = all_failures(email.message_from_bytes(raw[:_HEURISTIC_BYTES]))
    # flufl.bounce's heuristics run over arbitrary mail from the internet; one message they
    # choke on must be left for a person, not stop the whole mailbox
    except Exception:
        return None
    if not (temporary or permanent):
        return None
    addresses = sorted(a.decode("ascii", "replace") for a in (permanent or temporary))
    body = _body_text(msg)
    status_match = re.search(r"\b([45]\.[0-9]{1,3}\.[0-9]{1,3})\b", body)
    code_match = _SMTP_CODE.search(body)
    # Exim and qmail word every bounce as permanent, even one given up on after the receiver
    # answered 4xx until the retry time ran out: what the receiver said decides, as in a DSN
    reply = status_match.group(1) if status_match else code_match.group(1) if code_match else ""
    gave_up = reply.startswith("4") or "retry timeout exceeded" in body.lower()
    found = BounceClass.TRANSIENT
    if permanent and not gave_up:
        # only the server's words, from its reply code on, decide: never the returned original
        # below them, whose footer (a "privacy policy" link) is our own text
        anchor = code_match or status_match
        said = body[anchor.start():anchor.start() + 300].split("\n\n")[0] if anchor else ""
        found = classify(int(code_match.group(1)) if code_match else None,
                         status_match.group(1) if status_match else "", _diagnostic_text(said))
        if found is BounceClass.DELIVERED:
            found = BounceClass.TRANSIENT
    return Analysis(
        _KIND_OF_CLASS[found],
        permanent=found.permanent,
        status=status_match.group(1) if status_match else "",
        diagnostic=(code_match.group(0) if code_match else "") + " (bounce without a delivery-status part)",
        delivery_ids=_verp_deliveries(config, msg, raw),
        claims=_claims_in(config, [raw_text(raw)]),
        named_addresses=addresses,
    )


def _analyse_complaint(
    config: Config, msg: Message, raw: bytes, report: Message, from_address: str
) -> Analysis:
    feedback_type = _unfold(report.get("Feedback-Type", "")).lower()
    user_agent = _unfold(report.get("User-Agent", ""))
    if feedback_type != "abuse":
        return Analysis(InboundKind.OTHER, note=f"feedback report of type {feedback_type or 'unknown'!r}",
                        from_address=from_address)
    named = _addresses(_all_text(report, "Original-Rcpt-To"))
    for original in _original_headers(msg):
        named += _addresses(_all_text(original, "To"))
    return Analysis(
        InboundKind.COMPLAINT,
        delivery_ids=_verp_deliveries(config, msg, raw),
        claims=_claims_in(config, [raw_text(raw)]),
        named_addresses=named,
        from_address=from_address,
        user_agent=user_agent,
        from_feedback_loop=is_trusted_feedback_loop(config, msg, from_address),
    )


def _looks_like_daemon(msg: Message, from_address: str) -> bool:
    local = from_address.rpartition("@")[0].lower()
    return local in _DAEMON_LOCALPARTS or bool(msg.get("X-Failed-Recipients"))


def _is_unsubscribe_request(config: Config, msg: Message) -> bool:
    """Addressed to the unsubscribe mailbox (plus-tags too), or "unsubscribe <valid token>" as subject."""
    if _unsubscribe_mailbox_addresses(config, msg):
        return True
    subject = unquote(_header_text(msg, "Subject"))
    return "unsubscribe" in subject.lower() and bool(_claims_in(config, [subject]))


def _unsubscribe_mailbox_addresses(config: Config, msg: Message) -> list[str]:
    mailto = config.unsubscribe.mailto.lower()
    if not mailto:
        return []
    local, _, domain = mailto.rpartition("@")
    matches: list[str] = []
    for address in _recipient_addresses(msg):
        their_local, _, their_domain = address.rpartition("@")
        if their_domain.lower() != domain:
            continue
        if their_local.lower() == local or their_local.lower().startswith(local + "+"):
            matches.append(address)
    return matches


def _claims_for_mailto(config: Config, msg: Message) -> list[UnsubscribeClaim]:
    # most deliberate first: the plus-tag and the subject the mailto: link filled in, then the body
    plus_tags = [addr.rpartition("@")[0].partition("+")[2] for addr in _unsubscribe_mailbox_addresses(config, msg)]
    subject = _header_text(msg, "Subject")
    tagged = [claim for tag in plus_tags if (claim := read_unsubscribe_tag(config.require_secret_keys(), tag))]
    found = _claims_in(config, [*plus_tags, unquote(subject), subject, _body_text(msg)])
    return [*dict.fromkeys([*tagged, *found])]


def _claims_in(config: Config, texts: Iterable[str]) -> list[UnsubscribeClaim]:
    """Every valid unsubscribe token in the texts, in order, each once."""
    keys = config.require_secret_keys()
    claims: list[UnsubscribeClaim] = []
    tried: set[str] = set()
    for text in texts:
        for candidate in _TOKEN.findall(text):
            if candidate in tried:
                continue
            if len(tried) >= _MAX_TOKEN_CANDIDATES:
                return claims
            tried.add(candidate)
            try:
                claim = read_unsubscribe_token(keys, candidate)
            except TokenError:
                continue
            if claim not in claims:
                claims.append(claim)
    return claims


def _verp_deliveries(config: Config, msg: Message, raw: bytes) -> list[int]:
    """Delivery ids from our VERP addresses: where the bounce was delivered to first, then anywhere."""
    domain = re.escape(config.sender.bounce_domain)
    pattern = re.compile(rf"b-[0-9]+-[a-z2-7]{{10}}@{domain}", re.IGNORECASE)
    ids: list[int] = []
    texts = [" ".join(_all_text(msg, name)) for name in _RECIPIENT_HEADERS] + [raw_text(raw)]
    for text in texts:
        for address in pattern.findall(text):
            delivery_id = parse_return_path(config, address)
            if delivery_id is not None and delivery_id not in ids:
                ids.append(delivery_id)
    return ids


def _recipient_addresses(msg: Message) -> list[str]:
    values: list[str] = []
    for name in _RECIPIENT_HEADERS:
        values += _all_text(msg, name)
    return _addresses(values)


def _addresses(values: list[str]) -> list[str]:
    """The addresses in header values, each value cut to a bounded length first."""
    bounded: list[str] = []
    for value in values:
        value = value[:_MAX_HEADER_CHARS]
        if value.count("(") > _MAX_COMMENT_PARENS:
            # the stdlib reads nested comments recursively: 600 "(" exhaust the stack, so
            # parentheses go; the address in angle brackets survives
            value = value.replace("(", " ").replace(")", " ")
        bounded.append(value)
    return [addr for _name, addr in getaddresses(bounded) if addr]


def _original_headers(msg: Message) -> list[Message]:
    """The returned original message's headers, from message/rfc822 or text/rfc822-headers parts."""
    originals: list[Message] = []
    for part in msg.walk():
        content_type = part.get_content_type()
        if content_type in ("message/rfc822", "message/global"):
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                originals.append(payload[0])
        elif content_type in ("text/rfc822-headers", "message/rfc822-headers", "text/global-headers"):
            originals.append(HeaderParser().parsestr(_part_text(part)))
    return originals


def _part_text(part: Message) -> str:
    """A part's content as text, whether the parser split it into blocks or left it a string."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return "\n\n".join(block.as_string() for block in payload if isinstance(block, Message))
    data = part.get_payload(decode=True)
    if isinstance(data, bytes):
        return _decode(data, part.get_content_charset())
    return str(payload)


def _body_text(msg: Message) -> str:
    """The text/plain parts of a message (not of attached messages), decoded."""
    texts: list[str] = []
    for part in msg.walk():
        if part.get_content_type() == "message/rfc822":
            break
        if part.get_content_type() == "text/plain":
            data = part.get_payload(decode=True)
            if isinstance(data, bytes):
                texts.append(_decode(data, part.get_content_charset()))
    return "\n".join(texts)


def _decode(data: bytes, charset: str | None) -> str:
    try:
        return data.decode(charset or "utf-8", "replace")
    except LookupError:
        return data.decode("latin-1")


def raw_text(raw: bytes) -> str:
    # latin-1 maps every byte, so ASCII tokens and addresses survive whatever the real charset is
    return raw.decode("latin-1")


def _header_text(msg: Message, name: str) -> str:
    value = msg.get(name)
    if value is None:
        return ""
    # each encoded word costs time to decode: a subject of 100,000 of them took most of a minute
    value = str(value)[:_MAX_HEADER_CHARS]
    try:
        text = str(make_header(decode_header(value)))
    except (UnicodeError, LookupError, ValueError):
        text = str(value)
    return _unfold(text)


def _all_text(msg: Message, name: str) -> list[str]:
    # the parser hands back Header objects, not strings, for headers with raw 8-bit bytes
    return [str(value) for value in msg.get_all(name, [])]


def _unfold(value: object) -> str:
    return " ".join(str(value).split())


# --- acting on it -------------------------------------------------------------------------------


def _act(session: Session, config: Config, analysis: Analysis) -> tuple[InboundKind, str]:
    if analysis.kind in (InboundKind.HARD_BOUNCE, InboundKind.SOFT_BOUNCE, InboundKind.POLICY_BLOCK):
        return _record_bounce(session, config, analysis)
    if analysis.kind is InboundKind.COMPLAINT:
        return _record_complaint(session, config, analysis)
    if analysis.kind is InboundKind.UNSUBSCRIBE:
        return _unsubscribe_by_mail(session, config, analysis)
    return analysis.kind, analysis.note


def _find_delivery(session: Session, analysis: Analysis) -> Delivery | None:
    for delivery_id in analysis.delivery_ids:
        delivery = session.get(Delivery, delivery_id)
        if delivery is not None:
            return delivery
    # no VERP address survived: the token in the returned original names campaign and subscriber
    for claim in analysis.claims:
        if claim.campaign_id is None:
            continue
        delivery = session.scalar(sa.select(Delivery).where(
            Delivery.campaign_id == claim.campaign_id, Delivery.subscriber_id == claim.subscriber_id))
        if delivery is not None:
            return delivery
    return None


def _record_bounce(session: Session, config: Config, analysis: Analysis) -> tuple[InboundKind, str]:
    delivery = _find_delivery(session, analysis)
    if delivery is None:
        return InboundKind.UNMATCHED, "a bounce that names none of our deliveries"
    subscriber = session.get(Subscriber, delivery.subscriber_id) if delivery.subscriber_id else None
    email = subscriber.email if subscriber is not None else ""
    named = {normalize_email(a) for a in analysis.named_addresses}
    who = email or "an erased subscriber"
    if email and named and normalize_email(email) not in named:
        # the report is about a mailbox the person no longer has (the address was corrected
        # since): the delivery failed, but the dead mailbox must not follow them to the new one
        who = f"{sorted(named)[0]} (no longer the subscriber's address)"
        email = ""
    # an erased or corrected subscriber leaves only the hash of the address the report names
    digest = address_hash(email or (analysis.named_addresses or ["unknown"])[0])
    code = _SMTP_CODE.search(analysis.diagnostic)
    status = analysis.status or (code.group(1) if code else "no status")
    if analysis.permanent and delivery.state in _BOUNCEABLE_STATES:
        # the one place a sent delivery becomes failed after the fact: the receiver said so later
        delivery.state = DeliveryState.FAILED
        delivery.last_code = int(code.group(1)) if code else delivery.last_code
        delivery.last_response = f"bounced: {status} {analysis.diagnostic}".strip()[:1000]
    if analysis.kind is InboundKind.POLICY_BLOCK:
        return _record_policy_block(session, config, analysis, delivery, digest, status, who)
    if analysis.kind is InboundKind.HARD_BOUNCE:
        _add_bounce_event(session, BounceKind.HARD, delivery, digest, analysis)
        if not email:
            return InboundKind.HARD_BOUNCE, f"delivery {delivery.id} failed ({status}); {who}"
        _entry, created = suppress_address(session, email, SuppressionReason.HARD_BOUNCE, f"bounce {status}"[:100])
        if created:
            _audit_suppression(session, email, f"hard bounce: {status} {analysis.diagnostic}", delivery)
        return InboundKind.HARD_BOUNCE, f"delivery {delivery.id} failed ({status}); {who} suppressed"
    if analysis.still_trying:
        # a delay warning is no bounce: the server still holds the message (Gmail sends them when
        # a big send arrives faster than it accepts), so counting it would suppress healthy inboxes;
        # if the server gives up, its `Action: failed` report is counted then
        return InboundKind.DELAYED, (f"delivery {delivery.id} delayed ({status}); {who}: the server "
                                     "is still trying, not counted")
    added = _add_bounce_event(session, BounceKind.SOFT, delivery, digest, analysis)
    campaigns = session.scalar(
        sa.select(sa.func.count(sa.distinct(BounceEvent.campaign_id)))
        .where(BounceEvent.address_hash == digest, BounceEvent.kind == BounceKind.SOFT)
    ) or 0
    limit = config.sending.soft_bounce_limit
    how = "failed, not for a missing mailbox" if analysis.permanent else "delayed or failed for now"
    note = f"delivery {delivery.id} {how} ({status}); {who}: {campaigns} of {limit}"
    if not added:
        note += " (this delivery was already counted)"
    if campaigns >= limit and email:
        _entry, created = suppress_address(
            session, email, SuppressionReason.SOFT_BOUNCES, f"{campaigns} campaigns soft-bounced"
        )
        if created:
            note += "; suppressed"
            _audit_suppression(session, email, f"{campaigns} campaigns soft-bounced, the last {status}", delivery)
    return InboundKind.SOFT_BOUNCE, note


def _record_policy_block(session: Session, config: Config, analysis: Analysis, delivery: Delivery,
                         digest: str, status: str, who: str) -> tuple[InboundKind, str]:
    # the receiver distrusts the sender (blocklist, DMARC...), not the address: nobody is suppressed
    added = record_policy_block(session, delivery.id, delivery.campaign_id, digest, analysis.status,
                                analysis.diagnostic, utcnow())
    note = f"delivery {delivery.id} refused by policy ({status}); {who} not suppressed"
    if not added:
        note += " (this delivery was already counted)"
    paused = pause_for_policy_blocks(session, delivery.campaign_id, PolicyPauseRule.from_config(config.sending))
    if paused:
        note += f"; campaign {delivery.campaign_id} paused"
    return InboundKind.POLICY_BLOCK, note


def _audit_suppression(session: Session, email: str, reason: str, delivery: Delivery | None) -> None:
    # the privacy policy promises a record of every change to whom we may mail
    record_event(session, "suppress", "inbound", subject=email, reason=reason.strip()[:1000], detail={
        "delivery_id": delivery.id if delivery else None,
        "campaign_id": delivery.campaign_id if delivery else None,
    })


def _add_bounce_event(
    session: Session, kind: BounceKind, delivery: Delivery | None, digest: str, analysis: Analysis
) -> bool:
    """Record one event per (delivery, kind); False when it was there already."""
    if delivery is not None and session.scalar(
        sa.select(BounceEvent.id).where(BounceEvent.delivery_id == delivery.id, BounceEvent.kind == kind)
    ):
        return False
    session.add(BounceEvent(
        kind=kind,
        delivery_id=delivery.id if delivery else None,
        campaign_id=delivery.campaign_id if delivery else None,
        address_hash=digest,
        status=analysis.status[:20],
        diagnostic=analysis.diagnostic[:1000],
    ))
    session.flush()
    return True


def _record_complaint(session: Session, config: Config, analysis: Analysis) -> tuple[InboundKind, str]:
    delivery = _find_delivery(session, analysis)
    found = _complainant(session, analysis, delivery)
    # our marks name someone since erased: a true report about nobody we still have
    marked = delivery is not None or bool(analysis.claims)
    if found is None and not marked and not analysis.from_feedback_loop:
        # COMPLIANCE 28: anyone can write a report naming anyone; without our own signed mark
        # or a feedback loop the operator vouches for, it is only listed
        named = ", ".join(dict.fromkeys(analysis.named_addresses[:3])) or "nobody"
        return InboundKind.UNVERIFIED_COMPLAINT, (
            f"from {analysis.from_address or '(no From)'} naming {named}: no token or return path of "
            "ours, not from a configured feedback-loop sender; nothing changed")
    if found is None and analysis.from_feedback_loop:
        found = _named_complainant(session, analysis)
    if found is None:
        return InboundKind.UNMATCHED, "a spam complaint about nobody we mailed"
    subscriber, how = found
    source = f"complaint ({analysis.user_agent or analysis.from_address or 'ARF'})"[:100]
    _entry, created = suppress_address(session, subscriber.email, SuppressionReason.COMPLAINT, source)
    if created:
        _audit_suppression(session, subscriber.email, f"spam complaint: {source}, identified by {how}", delivery)
    _add_bounce_event(session, BounceKind.COMPLAINT, delivery, address_hash(subscriber.email), analysis)
    # a spam report is the strongest opt-out there is: every list, whatever unsubscribe.scope says
    unsubscribe(session, config, UnsubscribeClaim(subscriber.id, None, delivery.campaign_id if delivery else None),
                "complaint", actor="inbound")
    return InboundKind.COMPLAINT, (f"{subscriber.email} suppressed" + ("" if created else " (already)")
                                   + f", identified by {how}")


def _complainant(
    session: Session, analysis: Analysis, delivery: Delivery | None
) -> tuple[Subscriber, str] | None:
    """The subscriber our own signed token or VERP address in the report names, and which."""
    for claim in analysis.claims:
        subscriber = session.get(Subscriber, claim.subscriber_id)
        if subscriber is not None:
            return subscriber, "our unsubscribe token"
    if delivery is not None and delivery.subscriber_id is not None:
        subscriber = session.get(Subscriber, delivery.subscriber_id)
        if subscriber is not None:
            return subscriber, "our return path"
    return None


def _named_complainant(session: Session, analysis: Analysis) -> tuple[Subscriber, str] | None:
    # only for a feedback loop the operator trusts, and last, since providers often redact it
    for address in analysis.named_addresses:
        subscriber = find_subscriber(session, address)
        if subscriber is not None:
            return subscriber, f"the address {analysis.from_address} named"
    return None


def _unsubscribe_by_mail(session: Session, config: Config, analysis: Analysis) -> tuple[InboundKind, str]:
    claim = next((c for c in analysis.claims if session.get(Subscriber, c.subscriber_id)), None)
    how = "token"
    if claim is None and analysis.from_address:
        # no usable token: the sender asks for their own address, as the 400 page tells them to
        sender = find_subscriber(session, analysis.from_address)
        if sender is not None:
            claim, how = UnsubscribeClaim(sender.id, None, None), "sender address"
    if claim is None:
        return InboundKind.UNMATCHED, "an unsubscribe request for nobody we know"
    result = unsubscribe(session, config, claim, OptOutSource.MAILTO)
    target = result.masked_email or mask_email(analysis.from_address)
    if not result.changed:
        return InboundKind.UNSUBSCRIBE, f"{target} was already unsubscribed (by {how})"
    scope = f"the list {result.list_title}" if result.list_title else "everything"
    return InboundKind.UNSUBSCRIBE, f"{target} unsubscribed from {scope} (by {how})"
