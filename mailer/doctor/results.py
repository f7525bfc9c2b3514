"""One finding of the doctor: a status, the check's name and one sentence saying what to change."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Status(enum.StrEnum):
    """How one check came out."""

    PASS = "PASS"  # as receivers want it
    WARN = "WARN"  # works, but some receivers will mind
    FAIL = "FAIL"  # receivers will reject or junk the mail until it is fixed
    UNKNOWN = "UNKNOWN"  # no answer (no resolver, a time-out, no network): never blocks a send


@dataclass(frozen=True)
class Finding:
    check: str  # short name such as "spf from" or "dkim"
    status: Status
    message: str  # what was found and, unless it passed, what to change
    # receivers will certainly refuse or junk every message: `campaign send` stops (unless --force)
    hopeless: bool = False

    def line(self) -> str:
        return f"{self.status.value:<7} {self.check:<12} {self.message}"

    def as_dict(self) -> dict[str, str]:
        return {"check": self.check, "status": self.status.value, "message": self.message}
