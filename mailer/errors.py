"""The one error tree of the mailer: every expected failure is a MailerError."""

from __future__ import annotations

import os


class MailerError(Exception):
    """Root of every error the mailer raises on purpose; the CLI prints it as one line."""


class ConfigError(MailerError, ValueError):
    """The configuration file or an environment variable holds an invalid value."""

    def __init__(self, source: str, key: str, reason: str) -> None:
        self.source = source
        self.key = key
        self.reason = reason
        super().__init__(f"{source}: {key}: {reason}")


class NotFoundError(MailerError, LookupError):
    """A list, subscriber, campaign or other named thing does not exist."""


class AlreadyExistsError(MailerError):
    """A thing with that name or address already exists."""


class InvalidInputError(MailerError, ValueError):
    """Input from the user (an address, a name, a file) is malformed."""


class SuppressedError(MailerError):
    """The address has opted out or was erased; it may not be subscribed or mailed."""


class ImportFileError(MailerError):
    """A CSV file cannot be imported as a whole (missing, not UTF-8, no email column)."""


class TemplateError(MailerError):
    """A campaign template is missing, does not parse or does not render."""


class ComplianceError(MailerError):
    """A campaign fails the compliance gate; `problems` lists every reason."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class TokenError(MailerError, ValueError):
    """A signed link token is tampered with, truncated, unknown or expired."""


class DeliveryError(MailerError):
    """Sending cannot start or go on (campaign state, relay down)."""


class DatabaseUnavailable(MailerError):
    """The database stayed out of reach longer than the command may wait (database.reconnect_for);
    the command line exits with 75 (EX_TEMPFAIL)."""


def check_unicode(what: str, text: str) -> str:
    """`text` unchanged; raises InvalidInputError naming `what` when it is not valid Unicode.

    Python turns bytes that are not UTF-8 (a Latin-1 terminal, a script) into lone surrogates
    that no database, JSON column or message can encode: refused before they are stored.
    """
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidInputError(f"{what} is not valid UTF-8") from None
    return text


def path_text(name: str | os.PathLike[str]) -> str:
    """A file name as text that can be stored: a byte that is not UTF-8 becomes a `\\x85` escape.

    A file name may be any bytes, so a path is never refused as check_unicode refuses text.
    """
    return os.fsencode(name).decode("utf-8", "backslashreplace")
