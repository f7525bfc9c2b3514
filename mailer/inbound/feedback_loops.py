"""The feedback loops an operator trusts: whose spam complaints count when they only name an address."""

from __future__ import annotations

from dataclasses import dataclass
from email.message import Message

from mailer.config import Config

# one Authentication-Results header as a person reads it, cut short: no real one is longer
_MAX_RESULTS_CHARS = 4000
# comments nest (RFC 5322 section 3.2.2); a real MTA writes one level, a hostile one many
_MAX_COMMENT_DEPTH = 8
# the characters that end an unquoted word in RFC 8601's grammar as a reader needs it
_SPECIALS = frozenset(';=()"')


def is_feedback_loop_sender(config: Config, address: str) -> bool:
    """True when the address, or its domain exactly, is listed in inbound.feedback_loop_senders."""
    address = address.strip().lower()
    local, at, domain = address.rpartition("@")
    if not (local and at and domain):
        return False
    for entry in config.inbound.feedback_loop_senders:
        entry = entry.strip().lower()
        # a domain does not cover its subdomains: whoever can send as one is not vouched for
        if (address == entry) if "@" in entry else (domain == entry):
            return True
    return False


def is_trusted_feedback_loop(config: Config, msg: Message, from_address: str) -> bool:
    """A report from a configured feedback loop that, when asked to, our MTA found DMARC-aligned.

    Without inbound.trusted_authserv_ids the From address alone decides. With them, the
    topmost Authentication-Results header one of them added must say dmarc=pass for the
    From domain: the MTA prepends its header, so one an attacker wrote sits below it.
    """
    if not is_feedback_loop_sender(config, from_address):
        return False
    trusted = {entry.strip().lower() for entry in config.inbound.trusted_authserv_ids}
    if not trusted:
        return True
    domain = from_address.rpartition("@")[2].lower()
    for value in msg.get_all("Authentication-Results", []):
        text = str(value)
        tokens, complete = _tokens(text[:_MAX_RESULTS_CHARS])
        complete = complete and len(text) <= _MAX_RESULTS_CHARS
        if not tokens or tokens[0].kind not in ("word", "quoted") or tokens[0].text.lower() not in trusted:
            continue
        # the topmost header of our MTA decides alone: one it could not have written whole is
        # no pass, and one further down may be the attacker's
        return complete and _dmarc_passes(tokens, domain)
    return False


@dataclass(frozen=True)
class _Token:
    kind: str  # "word", "quoted" (its text unquoted), ";" or "="
    text: str
    joined: bool  # follows the token before it with no space or comment between


def _tokens(text: str) -> tuple[list[_Token], bool]:
    """Split an Authentication-Results value into RFC 8601 tokens, dropping comments.

    A `;` or `=` inside a quoted string or a comment is text, never a separator: values such
    as smtp.mailfrom are chosen by whoever sent the message. Also returns whether the whole
    value was read (no unclosed quote or comment, no comment nested too deep)."""
    tokens: list[_Token] = []
    joined = False
    i = 0
    while i < len(text):
        ch = text[i]
        if ch.isspace():
            joined, i = False, i + 1
        elif ch == "(":
            end = _comment_end(text, i)
            if end is None:
                return tokens, False
            joined, i = False, end
        elif ch == '"':
            quoted, end = _quoted(text, i)
            if end is None:
                return tokens, False
            tokens.append(_Token("quoted", quoted, joined))
            joined, i = True, end
        elif ch in ";=":
            tokens.append(_Token(ch, ch, joined))
            joined, i = True, i + 1
        elif ch == ")":
            return tokens, False
        else:
            start = i
            while i < len(text) and not text[i].isspace() and text[i] not in _SPECIALS:
                i += 1
            tokens.append(_Token("word", text[start:i], joined))
            joined = True
    return tokens, True


def _comment_end(text: str, start: int) -> int | None:
    """The index after the comment opening at `start`, or None when it never closes."""
    depth = 0
    i = start
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "(":
            depth += 1
            if depth > _MAX_COMMENT_DEPTH:
                return None
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


def _quoted(text: str, start: int) -> tuple[str, int | None]:
    """The unquoted text of the quoted string opening at `start`, and the index after it."""
    chars: list[str] = []
    i = start + 1
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            chars.append(text[i + 1])
            i += 2
        elif ch == '"':
            return "".join(chars), i + 1
        else:
            chars.append(ch)
            i += 1
    return "", None


def _dmarc_passes(tokens: list[_Token], domain: str) -> bool:
    """Whether a `dmarc` result in the header is `pass` with the property header.from=`domain`."""
    results: list[list[_Token]] = [[]]
    for token in tokens:
        if token.kind == ";":
            results.append([])
        else:
            results[-1].append(token)
    return any(_is_dmarc_pass_for(result, domain) for result in results[1:])


def _is_dmarc_pass_for(result: list[_Token], domain: str) -> bool:
    # methodspec: "dmarc" ["/" version] "=" result, then reason and properties ptype.property=pvalue
    if len(result) < 3 or result[0].kind != "word" or result[1].kind != "=" or result[2].kind != "word":
        return False
    if result[0].text.partition("/")[0].lower() != "dmarc" or result[2].text.lower() != "pass":
        return False
    rest = result[3:]
    i = 0
    while i + 2 < len(rest) and rest[i].kind == "word" and rest[i + 1].kind == "=":
        # a value is the tokens that follow the "=" with nothing between them: "x;y"@example.com
        j = i + 2
        value = rest[j].text if rest[j].kind in ("word", "quoted") else None
        j += 1
        while value is not None and j < len(rest) and rest[j].joined and rest[j].kind in ("word", "quoted"):
            value += rest[j].text
            j += 1
        if value is None:
            return False
        if rest[i].text.lower() == "header.from":
            return value.lower() == domain
        i = j
    return False
