"""A message's bytes: 7bit or quoted-printable parts, and the form SMTP carries after DATA, each made once."""

from __future__ import annotations

import binascii

# encoded lines a campaign keeps; past this the cache starts again. The lines every message
# shares (layout, footer, the template's own) number in the hundreds; the rest, lines that hold
# someone's name or link, are each used once. A line longer than a line of mail may be is
# encoded each time and never kept: a template can write one of a million characters per recipient.
MAX_CACHED_LINES = 4096
# RFC 5322 2.1.1: a line of a message is at most 998 characters, its CRLF aside
MAX_LINE = 998


def quoted_printable(text: str) -> bytes:
    """UTF-8 quoted-printable with CRLF line endings and a final one; no line longer than 76 octets."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.endswith("\n"):
        text += "\n"
    # b2a_qp ends every line the way the first line ends; a leading CRLF, cut off after,
    # makes that CRLF without a pass over the text to rewrite each LF
    encoded: bytes = binascii.b2a_qp(("\r\n" + text).encode("utf-8"), istext=True, header=False)
    return encoded[2:]


class QuotedPrintableLines:
    """quoted_printable() byte for byte, with each distinct line encoded once per campaign.

    Quoted-printable encodes each line on its own (soft breaks, trailing blanks and a lone dot
    depend on nothing past the line's end), and most lines of a campaign's messages are the same
    in every one of them: encoding those once leaves the lines that hold a recipient's values."""

    def __init__(self) -> None:
        self._lines: dict[str, bytes] = {}

    def encode(self, text: str) -> bytes:
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        lines = text.split("\n")
        if text.endswith("\n"):
            lines.pop()  # what follows the final line break; quoted_printable() adds one where it is missing
        if len(self._lines) + len(lines) > MAX_CACHED_LINES:
            self._lines.clear()
        cached = self._lines
        encoded = list(map(cached.get, lines))  # the lookups in C; the few misses below
        if None in encoded:
            for index, found in enumerate(encoded):
                if found is None:
                    line = lines[index]
                    encoded[index] = made = quoted_printable(line)
                    if len(line) <= MAX_LINE:
                        cached[line] = made
        return b"".join(encoded)  # type: ignore[arg-type]  # no None is left


def seven_bit(text: str, forbidden: str) -> bytes | None:
    """The text as 7bit MIME content (RFC 2045 2.7), CRLF line endings and a final one; None when it
    cannot go so: a character past ASCII, a NUL or CR, a line past MAX_LINE, or `forbidden` (the
    message's multipart boundary) in it. Such text needs no encoding: each byte is the character."""
    if not text.isascii() or "\r" in text or "\x00" in text or forbidden in text:
        return None
    if len(text) > MAX_LINE and max(map(len, text.split("\n"))) > MAX_LINE:
        return None
    if not text.endswith("\n"):
        text += "\n"
    return text.replace("\n", "\r\n").encode("ascii")


def smtp_wire(data: bytes) -> bytes:
    """The message as it goes after DATA: CRLF line endings, leading dots doubled, ended by "." (RFC 5321
    4.5.2). Bytes operations, no regular expressions."""
    if data.count(b"\r") != data.count(b"\n") or data.count(b"\r\n") != data.count(b"\n"):
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    if b"\r\n." in data:
        data = data.replace(b"\r\n.", b"\r\n..")
    if data.startswith(b"."):
        data = b"." + data
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


def is_clean_head(head: bytes) -> bool:
    """Header lines that go on the wire as they are: CRLF only, none starting with a dot."""
    lines = head.count(b"\r\n")
    return (head.count(b"\n") == lines and head.count(b"\r") == lines and b"\r\n." not in head
            and not head.startswith(b"."))


def dot_stuffed(part: bytes) -> bytes:
    """A CRLF-ended part that begins a line, each line's leading dot doubled (RFC 5321 4.5.2)."""
    if b"\r\n." in part:
        part = part.replace(b"\r\n.", b"\r\n..")
    return b"." + part if part.startswith(b".") else part

