"""The sender's mailboxes (From, Reply-To): parsed strictly from what the operator typed, one address each."""

from __future__ import annotations

import email.errors
import email.policy
import re
import unicodedata
from email.headerregistry import Address
from email.utils import parseaddr

from mailer.errors import InvalidInputError

# something shaped like an address inside free text (a server's reply, a reason): what text about
# a person is scrubbed of; loose on purpose, since a reply may quote any address
ANY_ADDRESS = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]+@[\w-]+(?:\.[\w-]+)+")

# RFC 5321 caps an address at 254 octets; a display name longer than the rest of a header line
# reads as a paragraph, not a sender
MAX_MAILBOX_CHARS = 320
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_ADDRESS_SPEC = re.compile(r"^[^\s<>()\[\]\\,;:\"@\x00-\x1f\x7f]+@[^\s<>()\[\]\\,;:\"@\x00-\x1f\x7f]+$")
# in a sender's name these make readers (and careless parsers) see an address of its own
_ADDRESS_LOOKALIKE = re.compile(r"[<>@]")
# brackets and at signs that NFKC leaves alone but that readers take for `<`, `>` or `@`
# (the confusable skeletons of Unicode TR 39 that map to them, plus the angle brackets that
# look like them in mail clients' fonts)
_CONFUSABLE_LOOKALIKE = re.compile(
    "[\u02c2\u02c3\u1433\u1438\u2039\u203a\u2329\u232a\u276e\u276f\u27e8\u27e9"
    "\u29fc\u29fd\u3008\u3009\u16b2]"
)


def is_plain_address(text: str) -> bool:
    """True for a bare `user@domain` with nothing a parser would read as structure."""
    return _ADDRESS_SPEC.match(text) is not None


def _reads_as_address_mark(name: str) -> bool:
    """True when the name holds a character that shows as `<`, `>` or `@` without being one."""
    # NFKC turns the fullwidth, small and compatibility forms (U+FF20, U+FE6B, U+FF1C, U+FE64) into the ASCII ones
    folded = unicodedata.normalize("NFKC", name)
    return bool(_ADDRESS_LOOKALIKE.search(folded) or _CONFUSABLE_LOOKALIKE.search(folded))


def parse_mailbox(value: str) -> Address:
    """One mailbox, `Name <user@example.com>` or `user@example.com`, as a display name and an address.

    The display name is kept as typed: `=?utf-8?b?...?=` in it is text, never decoded into a
    second address. Raises InvalidInputError with one line saying what is wrong.
    """
    text = value.strip()
    if _CONTROL.search(text):
        raise InvalidInputError(f"{value!r} contains a line break or control character")
    if len(text) > MAX_MAILBOX_CHARS:
        raise InvalidInputError(f"{text[:40]!r}... is longer than {MAX_MAILBOX_CHARS} characters")
    problem = InvalidInputError(f"{text!r} is not one mailbox such as 'Name <user@example.com>'")
    try:
        # as receivers parse it: a second address, a group or an unclosed "<" is not one plain mailbox
        header = email.policy.default.header_factory("From", text)
        parsed = header.addresses
    except (email.errors.HeaderParseError, ValueError, IndexError, TypeError):
        raise problem from None
    if (
        header.defects or len(header.groups) != 1 or header.groups[0].display_name is not None
        or len(parsed) != 1 or text.endswith(",")
    ):
        raise problem
    name, address = parseaddr(text)
    if not address or address.lower() != parsed[0].addr_spec.lower() or not _ADDRESS_SPEC.match(address):
        raise problem
    if not address.isascii():
        raise InvalidInputError(f"{text!r}: the address must be ASCII (user@example.com)")
    if "=?" in name:
        raise InvalidInputError(
            f"{text!r}: write the name as plain text; the mailer encodes it, and an encoded word "
            "typed into it could hide another address"
        )
    if _ADDRESS_LOOKALIKE.search(name):
        raise InvalidInputError(f"{text!r}: the name must not contain <, > or @, which read as another address")
    if _reads_as_address_mark(name):
        raise InvalidInputError(
            f"{text!r}: the name must not contain look-alikes of <, > or @ (such as U+FF20 or U+2039), "
            "which read as another address"
        )
    try:
        return Address(display_name=" ".join(name.split()), addr_spec=address)
    except (ValueError, IndexError, email.errors.HeaderParseError):
        raise problem from None
