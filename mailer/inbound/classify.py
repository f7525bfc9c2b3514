"""Reading mail that comes back: what a message is and whom it names, without the database."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import enum
import itertools
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.errors import UndecodableBytesDefect
from email.header import decode_header, make_header
from email.headerregistry import AddressHeader
from email.message import Message
from email.parser import BytesHeaderParser, HeaderParser
from email.utils import getaddresses
from urllib.parse import unquote

from flufl.bounce import all_failures

from mailer.bounce_class import MAX_TEXT, BounceClass, classify, reply_code
from mailer.config import Config
from mailer.errors import TokenError
from mailer.inbound.feedback_loops import is_trusted_feedback_loop
from mailer.inbound.sources import MAX_MESSAGE_BYTES
from mailer.plus_tag import read_unsubscribe_tag
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


# what a person should look at after a run
LEFT_ALONE = frozenset({InboundKind.UNMATCHED, InboundKind.OTHER, InboundKind.UNVERIFIED_COMPLAINT})

# itsdangerous URL-safe tokens are base64url payload "." base64url signature (43 chars for sha256)
_TOKEN = re.compile(r"(?<![A-Za-z0-9_\-.])([A-Za-z0-9_\-]{2,200}\.[A-Za-z0-9_\-]{40,100})(?![A-Za-z0-9_\-])")
# more candidates than this in one message is noise, not a person asking to leave
_MAX_TOKEN_CANDIDATES = 50
# a reply code as servers write it ("550 ", "550-", "554:"), not the first octet of "[203.0.113.9]"
SMTP_CODE = re.compile(r"(?<![\w.])([245][0-9][0-9])(?=[ :-]|$)", re.MULTILINE)
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

# Bounds on what one message from the internet may cost, checked before the parts they guard.
# The parts a decision needs (the report, the status blocks, the returned headers) come first in
# every bounce and complaint we know, and all of it fits in far less than this
ANALYSED_BYTES = 1024 * 1024
# a header section bigger than this is no bounce, complaint or request (1.4 MB subjects exist)
MAX_HEADER_BYTES = 256 * 1024
# one header as decoded: encoded words cost time each, and no address list or subject needs more
_MAX_HEADER_CHARS = 4000
# the parser recurses once per nested message or multipart, and the stack ends near a thousand
_MAX_MIME_CONTAINERS = 32
MAX_MIME_PARTS = 500
# flufl.bounce tries many patterns on every line, some slow on hostile text; a bounce's failure
# text is always near the top
_HEURISTIC_BYTES = 64 * 1024
# more nested "(" than this in an address header is an attack on the stdlib's recursive parser
_MAX_COMMENT_PARENS = 16
# a line opening a container: "Content-Type: multipart/..." or "message/...", maybe folded
_CONTAINER_LINE = re.compile(rb"^content-type:[ \t]*(?:\r?\n[ \t]+)*(?:multipart|message)/",
                             re.IGNORECASE | re.MULTILINE)
_LINE_END = re.compile(rb"\r\n?")



def parse_head(raw: bytes) -> Message:
    """The top-level headers only: cheap, bounded, and never deeper than one level."""
    return BytesHeaderParser().parsebytes(raw[:MAX_HEADER_BYTES])



def shape_problem(raw: bytes) -> str:
    """Why a message is too big or too deep to parse safely, or ""."""
    if len(raw) > MAX_MESSAGE_BYTES:
        return f"too large: over {MAX_MESSAGE_BYTES // (1024 * 1024)} MiB"
    # the stdlib parser ends a line at CR, LF or CRLF alike: so must the counting, or bare CRs hide it all
    head = _LINE_END.sub(b"\n", raw[:ANALYSED_BYTES])
    end = re.search(rb"\n\n", head[:MAX_HEADER_BYTES + 2])
    if end is None and len(raw) > MAX_HEADER_BYTES:
        return f"headers longer than {MAX_HEADER_BYTES // 1024} KiB"
    containers = itertools.islice(_CONTAINER_LINE.finditer(head), _MAX_MIME_CONTAINERS + 1)
    if sum(1 for _match in containers) > _MAX_MIME_CONTAINERS:
        return f"more than {_MAX_MIME_CONTAINERS} nested messages or multiparts"
    return ""



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
    # a DSN's recipient blocks and what each says: act reads the one about the delivery's address
    recipients: list[tuple[RecipientStatus, BounceClass | None]] = field(default_factory=list)


def analyse(config: Config, msg: Message, raw: bytes) -> Analysis:
    """Sort a message: complaint, bounce, auto-reply, unsubscribe request, or other."""
    from_address = sender_address(msg)
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


def sender_address(msg: Message) -> str:
    """The one mailbox the From header names, read strictly from the raw header; "" for anything else.

    Encoded words are never decoded before parsing, and a display name never counts: the
    DMARC check at our MTA and the reader's mail client both see only the addr-spec, so a
    name like `ana@example.net <attacker@evil.example>` must not make the message Ana's.
    """
    values = [value for name, value in msg.raw_items() if name.lower() == "from"]
    if len(values) != 1 or not isinstance(values[0], str):
        return ""
    # unfolded as RFC 5322 says: the line breaks go, the whitespace after them stays
    value = re.sub(r"\r?\n|\r", "", values[0][:_MAX_HEADER_CHARS])
    if value.count("(") > _MAX_COMMENT_PARENS:
        return ""  # the parser reads nested comments recursively; no real From needs so many
    try:
        header = email.policy.default.header_factory("From", value)
    # the RFC 5322 parser is strict and hostile input finds its corners: such a From names nobody
    except Exception:
        return ""
    mailboxes = header.addresses if isinstance(header, AddressHeader) else ()
    if len(mailboxes) != 1 or any(group.display_name is not None for group in header.groups):
        return ""
    # 8-bit bytes in a display name are an old daemon's habit; any other defect means the
    # address could be read more than one way
    if any(not isinstance(defect, UndecodableBytesDefect) for defect in header.defects):
        return ""
    local, at, domain = mailboxes[0].addr_spec.rpartition("@")
    return mailboxes[0].addr_spec if local and at and domain and "@" not in local.strip('"') else ""


def feedback_report(msg: Message) -> Message | None:
    """The machine-readable part of an ARF report (RFC 5965), or None.

    Only the message itself can be a report: one attached inside another message (a bounce of
    a report, a forwarded one) comes from whoever wrote it, not from the outer sender."""
    if msg.get_content_type() != "multipart/report":
        return None
    if str(msg.get_param("report-type", "")).lower() != "feedback-report":
        return None
    parts = msg.get_payload()
    for part in parts if isinstance(parts, list) else []:
        if isinstance(part, Message) and part.get_content_type() == "message/feedback-report":
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
            action = unfold(fields.get("Action", "")).lower()
            original = _dsn_address(fields.get("Original-Recipient", ""))
            recipient = _dsn_address(fields.get("Final-Recipient", "")) or original
            if not action or not recipient:
                continue  # the per-message block, or noise
            found.append(RecipientStatus(
                recipient=recipient,
                original_recipient=original,
                action=action,
                status=unfold(fields.get("Status", "")).split()[0] if fields.get("Status") else "",
                diagnostic=unfold(fields.get("Diagnostic-Code", "")),
            ))
    return found


def _dsn_address(field_value: str) -> str:
    """`rfc822; <user@example.com>` -> `user@example.com`."""
    value = unfold(field_value)
    return (value.partition(";")[2] if ";" in value else value).strip().strip("<>")


def is_auto_reply(msg: Message) -> bool:
    """RFC 3834 Auto-Submitted other than "no", the older vacation headers, or a vacation subject."""
    auto_submitted = header_text(msg, "Auto-Submitted").strip().lower()
    if auto_submitted and not auto_submitted.startswith("no"):
        return True
    if any(msg.get(name) for name in ("X-Autoreply", "X-Autorespond", "X-Autoresponse", "X-Vacation",
                                      "X-AutoReply-From", "X-Mail-Autoreply")):
        return True
    # Exchange marks its out-of-office replies so, whatever their language, with or without
    # Auto-Submitted; a person's own mail from Outlook carries no such header
    suppress = header_text(msg, "X-Auto-Response-Suppress").lower()
    if suppress and suppress != "none":
        return True
    precedence = (header_text(msg, "Precedence") + " " + header_text(msg, "X-Precedence")).lower()
    if "auto_reply" in precedence or "auto-reply" in precedence:
        return True
    if "autoresponder" in header_text(msg, "X-POST-MessageClass").lower():
        return True
    return bool(_AUTO_REPLY_SUBJECT.match(header_text(msg, "Subject")))


def _analyse_dsn(config: Config, msg: Message, raw: bytes, statuses: list[RecipientStatus]) -> Analysis:
    notification = _body_text(msg)[:MAX_TEXT]
    classified = [(s, s.bounce_class(notification)) for s in statuses]
    found = _gravest(classified)
    if found.kind is InboundKind.OTHER:
        return found
    found.delivery_ids = _verp_deliveries(config, msg, raw)
    found.claims = _claims_in(config, [raw_text(raw)])
    found.named_addresses = [a for s in statuses for a in (s.recipient, s.original_recipient) if a]
    found.recipients = classified
    return found


def _gravest(classified: list[tuple[RecipientStatus, BounceClass | None]]) -> Analysis:
    """What the gravest of some recipient blocks says: kind, status and diagnostic."""
    found = min((c for _s, c in classified), key=_GRAVITY.index)
    chosen = next(s for s, c in classified if c is found)
    if found is None:
        return Analysis(InboundKind.OTHER, note=f"delivery report without a failure ({chosen.action})")
    transient = [s for s, c in classified if c is BounceClass.TRANSIENT]
    return Analysis(
        _KIND_OF_CLASS[found], status=chosen.status, diagnostic=chosen.diagnostic,
        still_trying=found is BounceClass.TRANSIENT and all(s.action.startswith("delayed") for s in transient),
        permanent=found.permanent,
    )


def about_address(analysis: Analysis, addresses: Iterable[str]) -> Analysis | None:
    """The analysis as far as it concerns one mailbox (any of its spellings), or None when it names none.

    A report may list several recipients (alias and list expansion, forwarding): only the
    blocks that name the delivery's own address say what became of it, not the gravest one.
    A bounce without status blocks names its addresses only; it is about them all alike.
    """
    wanted = {a.strip().lower() for a in addresses if a.strip()}
    if not analysis.recipients:
        named = {a.strip().lower() for a in analysis.named_addresses}
        return analysis if not named or named & wanted else None
    own = [(s, c) for s, c in analysis.recipients
           if {s.recipient.strip().lower(), s.original_recipient.strip().lower()} & wanted]
    if not own:
        return None
    found = _gravest(own)
    return dataclasses.replace(
        analysis, kind=found.kind, note=found.note, status=found.status, diagnostic=found.diagnostic,
        still_trying=found.still_trying, permanent=found.permanent,
        named_addresses=[a for s, _c in own for a in (s.recipient, s.original_recipient) if a])


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
# what a bounce reported another way (a provider's webhook) makes, by the same table
KIND_OF_CLASS = _KIND_OF_CLASS


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
    code_match = SMTP_CODE.search(body)
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
    feedback_type = unfold(report.get("Feedback-Type", "")).lower()
    user_agent = unfold(report.get("User-Agent", ""))
    if feedback_type != "abuse":
        return Analysis(InboundKind.OTHER, note=f"feedback report of type {feedback_type or 'unknown'!r}",
                        from_address=from_address)
    named = header_addresses(_all_text(report, "Original-Rcpt-To"))
    for original in _original_headers(msg):
        named += header_addresses(_all_text(original, "To"))
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
    subject = unquote(header_text(msg, "Subject"))
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
    subject = header_text(msg, "Subject")
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
    return header_addresses(values)


def header_addresses(values: list[str]) -> list[str]:
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
        return "\n\n".join(_block_text(block) for block in payload if isinstance(block, Message))
    data = part.get_payload(decode=True)
    if isinstance(data, bytes):
        return _decode(data, part.get_content_charset())
    return str(payload)


def _block_text(block: Message) -> str:
    """A header block as text, 8-bit field bodies decoded.

    The compat32 parser would hand a field with one non-ASCII byte back as an
    `=?unknown-8bit?...?=` word, hiding its reply code from the classifier and its address
    from erasure."""
    return "\n".join(f"{name}: {decode_8bit(value)}" for name, value in block.raw_items())


def decode_8bit(value: object) -> str:
    """A header value as parsed from bytes: UTF-8 as servers mostly write it, else latin-1 (every byte is one)."""
    data = str(value).encode("utf-8", "surrogateescape")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


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


def header_text(msg: Message, name: str) -> str:
    value = msg.get(name)
    if value is None:
        return ""
    # each encoded word costs time to decode: a subject of 100,000 of them took most of a minute
    value = str(value)[:_MAX_HEADER_CHARS]
    try:
        text = str(make_header(decode_header(value)))
    except (UnicodeError, LookupError, ValueError):
        text = str(value)
    return unfold(text)


def _all_text(msg: Message, name: str) -> list[str]:
    # the parser hands back Header objects, not strings, for headers with raw 8-bit bytes
    return [str(value) for value in msg.get_all(name, [])]


def unfold(value: object) -> str:
    return " ".join(str(value).split())


# --- acting on it -------------------------------------------------------------------------------
