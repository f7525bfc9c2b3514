"""The one error tree of the mailer: every expected failure is a MailerError."""

from __future__ import annotations


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
