"""Stored text made safe for a terminal: control and bidi characters are shown, never obeyed."""

from __future__ import annotations

import re

import click

# C0 and C1 controls and DEL move the cursor, retitle the window or hide text (ESC ] 0 ; ... BEL,
# CSI ... m, CR, backspace); bidi controls reorder what follows so that `moc.elpmaxe@` reads as
# something else; line and paragraph separators end a line in some viewers; a lone surrogate
# cannot be written at all. Addresses, names, reasons, subjects and complaint reports are all
# written by strangers.
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029\ud800-\udfff]"
)
# JSON escapes C0 controls itself; these are the rest, which json.dumps(ensure_ascii=False) keeps raw
_UNSAFE_IN_JSON = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029\ud800-\udfff]")


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def terminal_safe(text: str) -> str:
    """`text` with every control, bidi and separator character written as an escape like \\x1b or \\u202e.

    Printable text, backslashes included, comes out unchanged. Line breaks are escaped too: one
    value never spreads over two lines, where it could pass for another record.
    """
    return _UNSAFE.sub(_visible, text)


def json_terminal_safe(text: str) -> str:
    """JSON text whose strings spell the remaining unsafe characters as \\u escapes: the same JSON."""
    return _UNSAFE_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def echo_line(text: str, err: bool = False) -> None:
    """Print one line for people, with whatever stored data it holds made harmless."""
    click.echo(terminal_safe(text), err=err)
