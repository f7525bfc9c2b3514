"""Where inbound mail is read from: a Maildir, an mbox, one file or a stream, one bounded message at a time."""

from __future__ import annotations

import mailbox
import os
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from mailer.errors import InvalidInputError

# a bounce or complaint returns at most the original message, and ours are far smaller; a larger
# message is nobody's opt-out, and reading it whole would let one message fill the memory
MAX_MESSAGE_BYTES = 10 * 1024 * 1024
# what is kept of a message over the limit: enough for its Message-ID, From and Subject
_HEAD_OF_TOO_LARGE = 64 * 1024
# Maildir's info part: "<unique name>:2,<flags>"; S says the message was seen
_INFO = ":2,"
_SEEN = "S"


@dataclass
class RawMessage:
    """One message as read, before anything looks inside it."""

    origin: str  # the file name or place in the mbox, for a message without a Message-ID
    data: bytes  # the whole message, or only its head when too_large
    too_large: bool = False
    on_handled: Callable[[], None] | None = None

    def mark_handled(self) -> None:
        """Say the message was dealt with for good, so the next run does not read it again."""
        if self.on_handled is not None:
            self.on_handled()


def read_sources(source: str | os.PathLike[str] | BinaryIO) -> Iterator[RawMessage]:
    """Each message in a Maildir, an mbox, a message file or a stream ("-" is stdin).

    Raises InvalidInputError when the source cannot be read.
    """
    if not isinstance(source, str | os.PathLike):
        yield RawMessage("stream", *_read_bounded(source))
        return
    if str(source) == "-":
        yield RawMessage("stdin", *_read_bounded(sys.stdin.buffer))
        return
    path = Path(source)
    if path.is_dir():
        if not ((path / "cur").is_dir() or (path / "new").is_dir()):
            raise InvalidInputError(f"{path} is a directory but not a Maildir (it has no cur/ or new/)")
        yield from _read_maildir(path)
        return
    try:
        with path.open("rb") as fh:
            head = fh.read(5)
            if head != b"From ":
                fh.seek(0)
                data, too_large = _read_bounded(fh)
    except OSError as exc:
        raise InvalidInputError(f"cannot read {path}: {exc.strerror or exc}") from None
    if head == b"From ":
        yield from _read_mbox(path)
        return
    yield RawMessage(path.name, data, too_large)


class _Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


def _read_bounded(stream: _Readable) -> tuple[bytes, bool]:
    data = stream.read(MAX_MESSAGE_BYTES + 1)
    if len(data) > MAX_MESSAGE_BYTES:
        return data[:_HEAD_OF_TOO_LARGE], True
    return data, False


_NUMBERS = re.compile(r"(\d+)")


def delivery_order(name: str) -> list[tuple[int, str]]:
    """A Maildir name's sort key, its numbers compared as numbers: `1764406800.M95000P7.host`
    (seconds, then microseconds, as Python and Dovecot write them) comes before `...M120000P7`,
    which a plain string sort puts first."""
    return [(int(part), "") if part.isdigit() else (-1, part) for part in _NUMBERS.split(name)]


def _read_maildir(path: Path) -> Iterator[RawMessage]:
    # only what no run has handled yet: all of new/, and what a mail client moved to cur/ unseen
    waiting: list[tuple[str, str]] = []
    for folder in ("new", "cur"):
        if not (path / folder).is_dir():
            continue
        for entry in os.scandir(path / folder):
            if entry.name.startswith(".") or not entry.is_file():
                continue
            if folder == "cur" and _SEEN in entry.name.partition(_INFO)[2]:
                continue
            waiting.append((folder, entry.name))
    # Maildir names start with the delivery time: sorted, a rerun meets them in the same order
    for folder, name in sorted(waiting, key=lambda found: delivery_order(found[1])):
        try:
            with (path / folder / name).open("rb") as fh:
                data, too_large = _read_bounded(fh)
        except FileNotFoundError:
            continue  # a run at the same time has handled it
        except OSError as exc:
            raise InvalidInputError(f"cannot read {path / folder / name}: {exc.strerror or exc}") from None
        yield RawMessage(name, data, too_large, on_handled=_mark_seen_later(path, folder, name))


def _mark_seen_later(path: Path, folder: str, name: str) -> Callable[[], None]:
    def mark_seen() -> None:
        unique, _info, flags = name.partition(_INFO)
        # flags are kept in ASCII order, as the Maildir convention asks
        seen = unique + _INFO + "".join(sorted(set(flags) | {_SEEN}))
        try:
            os.replace(path / folder / name, path / "cur" / seen)
        except FileNotFoundError:
            return  # a run at the same time has moved it
        except OSError as exc:
            raise InvalidInputError(f"cannot move {path / folder / name} to cur/: {exc.strerror or exc}") from None
    return mark_seen


def _read_mbox(path: Path) -> Iterator[RawMessage]:
    # an mbox cannot mark what was read: a rerun reads it all and skips what was acted on
    box = mailbox.mbox(path, factory=None, create=False)
    try:
        for number, key in enumerate(box.iterkeys(), 1):
            fh = box.get_file(key)
            try:
                data, too_large = _read_bounded(fh)
            finally:
                fh.close()
            yield RawMessage(f"{path.name} message {number}", data, too_large)
    finally:
        box.close()
