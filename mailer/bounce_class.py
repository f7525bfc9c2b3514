"""What a refusal means for the address: one table for DSNs and for the relay's replies during a send.

A receiving server says why it did not take a message with an SMTP reply code (RFC 5321), an
enhanced status code (RFC 3463) and free text. Only some refusals say the mailbox is gone; a
policy, reputation or authentication block (5.7.x) says something about the sender, and
suppressing the address for it would drop healthy subscribers by the thousand the day the
sending IP lands on a blocklist.

    enhanced status               class          what the mailer does
    2.x.x, 2xx reply              DELIVERED      nothing
    4.x.x, 4xx reply, delayed     TRANSIENT      retried / counted as a soft bounce, never suppressed
    5.2.2 mailbox full            TRANSIENT      as above: a full mailbox is usually emptied again
    5.1.0-5.1.6, 5.1.10           MAILBOX_GONE   the delivery fails and the address is suppressed
    5.2.1 mailbox disabled        MAILBOX_GONE   (same)
    5.4.4 unroutable              MAILBOX_GONE   (same)
    5.7.x                         POLICY_BLOCK   the delivery fails, counted per campaign, not suppressed
    5.1.7, 5.1.8 (our sender)     FAILED         the delivery fails; nobody is suppressed
    any other 5.x.x               FAILED         (5.2.x, 5.3.x, 5.4.x, 5.5.x, 5.6.x: the message or
                                                 the systems, not the mailbox)

A DSN's Status of 5.0.0 (Exim writes it for every failure) commits to nothing: the enhanced
code at the start of the server's reply in the diagnostic ("550 5.7.1 ...") decides instead.
Without an enhanced code (or with the non-committal x.0.0 in both places), the text decides:
the phrases of blocklists, DMARC/SPF/DKIM and policy rejections make a POLICY_BLOCK, those
about our sender or relaying ("sender address rejected", "relaying denied") make FAILED, and
checked after them the phrases of a missing mailbox ("user unknown", "no such user") make
MAILBOX_GONE; otherwise FAILED. A 2xx reply is DELIVERED and a 4xx or 552 reply TRANSIENT
whatever the rest says: the reply code decides what is retried (RFC 5321 made "too many
recipients" a 452; old servers still say 552); any other code that is not 5xx is FAILED.
"""

from __future__ import annotations

import enum
import re

# only the start of a diagnostic is read: long enough for any real server's text, short
# enough that a hostile report costs nothing to scan
MAX_TEXT = 2000

_ENHANCED = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.]*\d)")
_BASIC = re.compile(r"(?<![\w.])([245]\d\d)(?=[ :-]|$)", re.MULTILINE)
# the enhanced code a server puts first in its reply, after the DSN's diagnostic type and the
# reply code when they were left in: "smtp; 550-5.7.1 ...", "550 5.7.1 ...", "5.7.1 ..."
_REPLY_ENHANCED = re.compile(r"\s*(?:[\w-]{1,20};\s*)?(?:[245]\d\d[ -]\s*)?([245])\.(\d{1,3})\.(\d{1,3})(?![\d.]*\d)")

# what blocklists, authentication checks and policy filters write, at Postfix, Exim, Gmail,
# Microsoft, Yahoo and the appliances in front of them
_POLICY_TEXT = re.compile(
    r"blocked using|block ?list|black ?list|blocked by|listed (?:at|on|in|by)|\brbl\b|\bdnsbl\b|"
    r"spamhaus|spamcop|barracuda|sorbs|\bproofpoint\b|cloudmark|"
    r"rejected (?:due to|by|for) (?:local )?policy|policy (?:rejection|violation|reasons)|"
    r"\bdmarc\b|\bspf\b|\bdkim\b|unauthenticated|authentication (?:failed|required)|"
    r"reputation|poor reputation|access denied|not accepted from this ip|banned sending ip|"
    r"client host .{0,80} (?:blocked|rejected)|service unavailable; client host|"
    r"\bspam\b|junk mail|message (?:rejected|refused) as spam|too many complaints",
    re.IGNORECASE,
)
# refusals of our own sender address, or of relaying for it: "Sender address rejected: user
# unknown in local recipient table" names a gone mailbox, but it is ours, not the recipient's
_SENDER_TEXT = re.compile(
    r"\bsender (?:address |account |domain |mailbox |user )?(?:rejected|refused|denied|disabled|unknown|"
    r"invalid|not found|not allowed|(?:does not|doesn't) exist|has been disabled)|"
    r"invalid sender|unknown sender|"
    r"relay(?:ing)? (?:access )?(?:denied|not permitted|prohibited|refused)|unable to relay|"
    r"(?:not|isn't) (?:permitted|allowed|authori[sz]ed) to relay|we do not relay|relay not allowed",
    re.IGNORECASE,
)
# not "mailbox unavailable": RFC 5321 gives it as the text of any 550, policy refusals included
_GONE_TEXT = re.compile(
    r"(?:user|recipient|mailbox) unknown|unknown (?:user|recipient|mailbox)|"
    r"no such (?:user|mailbox|recipient|address|account)|"
    r"(?:mailbox|account|address|recipient|user) (?:does not|doesn't) exist|"
    r"(?:mailbox|account|address|recipient|user) (?:not found|disabled|has been disabled)|"
    r"(?:does not|doesn't) have an? [\w.-]{0,60} ?account|"
    r"invalid (?:mailbox|recipient)|unrouteable address|no mailbox here",
    re.IGNORECASE,
)
# 5.1.x statuses about the receiver's mailbox or domain; 5.1.7 and 5.1.8 are about our sender
_GONE_ADDRESS = frozenset({0, 1, 2, 3, 4, 5, 6, 10})


class BounceClass(enum.StrEnum):
    """What one refusal (or acceptance) says about the recipient's address."""

    DELIVERED = "delivered"  # 2xx / 2.x.x: accepted, nothing to do
    TRANSIENT = "transient"  # 4xx, 4.x.x, delayed, 552, 5.2.2 mailbox full: try again, never suppress
    MAILBOX_GONE = "mailbox_gone"  # 5.1.x bad address or domain, 5.2.1 disabled, 5.4.4 unroutable: suppress
    POLICY_BLOCK = "policy_block"  # 5.7.x policy, reputation or authentication block: failed, not suppressed
    FAILED = "failed"  # any other permanent failure (message, system, protocol): failed, not suppressed

    @property
    def suppresses(self) -> bool:
        """Whether the address must never be mailed again."""
        return self is BounceClass.MAILBOX_GONE

    @property
    def permanent(self) -> bool:
        """Whether the delivery has failed for good (it may still be retried by hand)."""
        return self in (BounceClass.MAILBOX_GONE, BounceClass.POLICY_BLOCK, BounceClass.FAILED)


def enhanced_status(text: str) -> str:
    """The first RFC 3463 enhanced status code in `text` ("5.7.1"), or ""."""
    match = _ENHANCED.search(text[:MAX_TEXT])
    return ".".join(match.groups()) if match else ""


def reply_code(text: str) -> int | None:
    """The first SMTP reply code in `text` as servers write it ("550 ", "550-", "554:"), or None."""
    match = _BASIC.search(text[:MAX_TEXT])
    return int(match.group(1)) if match else None


def classify(code: int | None = None, status: str = "", text: str = "") -> BounceClass:
    """Classify an SMTP reply code and/or an enhanced status code, with the diagnostic text.

    `status` may be empty or the non-committal 5.0.0; then one is looked for at the start of
    `text`, as relays write it ("550 5.7.1 ..." gives code 550 and text "5.7.1 ..."). Never raises."""
    # the reply code decides what is retried (COMPLIANCE 30); the enhanced code and the text
    # decide, among permanent refusals, whether the mailbox is gone
    if code is not None and 200 <= code < 300:
        return BounceClass.DELIVERED
    if code is not None and (400 <= code < 500 or code == 552):
        return BounceClass.TRANSIENT
    if code is not None and not 500 <= code < 600:
        return BounceClass.FAILED  # no refusal SMTP defines: it says nothing about the mailbox
    text = text[:MAX_TEXT]
    parsed = _ENHANCED.fullmatch(status.strip())
    # a 2.0.0 or 4.0.0 still commits to delivered or retried; a 5.0.0 says only "failed", so
    # what the receiving server itself said is the better witness (Exim writes 5.0.0 for all)
    if parsed is None or tuple(map(int, parsed.groups())) == (5, 0, 0):
        parsed = _REPLY_ENHANCED.match(text) or parsed
    if parsed is not None:
        klass, subject, detail = (int(part) for part in parsed.groups())
        if klass == 2:
            return BounceClass.DELIVERED
        if klass == 4:
            return BounceClass.TRANSIENT
        if subject or detail:
            return _permanent_status(subject, detail)
    return _by_text(text)


def _permanent_status(subject: int, detail: int) -> BounceClass:
    if subject == 7:
        return BounceClass.POLICY_BLOCK
    if subject == 1 and detail in _GONE_ADDRESS:
        return BounceClass.MAILBOX_GONE
    if (subject, detail) in ((2, 1), (4, 4)):
        return BounceClass.MAILBOX_GONE
    if (subject, detail) == (2, 2):
        return BounceClass.TRANSIENT
    return BounceClass.FAILED


def _by_text(text: str) -> BounceClass:
    # policy first: "550 Mailbox unavailable: rejected due to policy" is about us, not the mailbox
    if _POLICY_TEXT.search(text):
        return BounceClass.POLICY_BLOCK
    if _SENDER_TEXT.search(text):
        return BounceClass.FAILED
    if _GONE_TEXT.search(text):
        return BounceClass.MAILBOX_GONE
    return BounceClass.FAILED
