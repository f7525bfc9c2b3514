"""Log lines of a sending process: a line per campaign started and finished, and progress every few
seconds, one line each, as logfmt (key=value) or JSON, for journalctl and log shippers."""

from __future__ import annotations

import datetime as dt
import enum
import json
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from mailer.delivery.pipeline import SendReport

DEFAULT_PROGRESS_EVERY = 30.0  # seconds; a journal line per half minute per campaign is enough to follow

FieldValue = str | int | float | bool | None


class LogFormat(enum.StrEnum):
    LOGFMT = "logfmt"
    JSON = "json"


class SendWatcher(Protocol):
    """What a sending loop tells whoever follows it."""

    def started(self, campaign_id: int) -> None: ...

    def on_batch(self, report: SendReport) -> None: ...

    def finished(self, report: SendReport) -> None: ...


def _escape_controls(text: str) -> str:
    # no ANSI escapes, carriage returns or line separators: a field never breaks or recolours a line
    return "".join(f"\\u{ord(c):04x}" if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") else c
                   for c in text)


def _logfmt_value(value: FieldValue) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.1f}"
    text = str(value)
    if text and not any(c in text for c in ' ="\\') and text.isprintable():
        return text
    return _escape_controls(json.dumps(text, ensure_ascii=False))


def format_line(fields: dict[str, FieldValue], fmt: LogFormat) -> str:
    """One log line, without its newline."""
    if fmt is LogFormat.JSON:
        rounded = {k: round(v, 1) if isinstance(v, float) else v for k, v in fields.items()}
        return _escape_controls(json.dumps(rounded, ensure_ascii=False))
    return " ".join(f"{key}={_logfmt_value(value)}" for key, value in fields.items())


def timestamp(now: dt.datetime) -> str:
    return now.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class _Send:
    began: float
    last_line: float
    handed_over_then: int = 0


class ProgressLog:
    """Writes the log lines of one process; also a SendWatcher for the sending loop."""

    def __init__(
        self,
        write: Callable[[str], None],
        fmt: LogFormat = LogFormat.LOGFMT,
        every: float = DEFAULT_PROGRESS_EVERY,
        *,
        status_of: Callable[[int], str] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.write = write
        self.fmt = fmt
        self.every = every
        self.status_of = status_of
        self.monotonic = monotonic
        self._sends: dict[int, _Send] = {}

    def event(self, event: str, fields: dict[str, FieldValue] | None = None, level: str = "info") -> None:
        line = {"ts": timestamp(dt.datetime.now(dt.UTC)), "level": level, "event": event, **(fields or {})}
        self.write(format_line(line, self.fmt))

    def started(self, campaign_id: int) -> None:
        now = self.monotonic()
        self._sends[campaign_id] = _Send(began=now, last_line=now)
        self.event("campaign_started", {"campaign": campaign_id})

    def on_batch(self, report: SendReport) -> None:
        send = self._sends.get(report.campaign_id)
        if send is None:  # a send this log was not told about: follow it from here
            self.started(report.campaign_id)
            send = self._sends[report.campaign_id]
        now = self.monotonic()
        if now - send.last_line < self.every:
            return
        rate = (report.handed_over - send.handed_over_then) / max(now - send.last_line, 1e-6)
        send.last_line, send.handed_over_then = now, report.handed_over
        self.event("campaign_progress", {**_counts(report), "rate": rate, "elapsed": now - send.began})

    def finished(self, report: SendReport) -> None:
        send = self._sends.pop(report.campaign_id, None)
        now = self.monotonic()
        elapsed = now - send.began if send is not None else 0.0
        fields: dict[str, FieldValue] = {**_counts(report), "rate": report.handed_over / max(elapsed, 1e-6)
                                         if elapsed else 0.0, "elapsed": elapsed, "outcome": _outcome(report)}
        if self.status_of is not None:
            fields["status"] = self.status_of(report.campaign_id)
        if report.paused_reason:
            fields["reason"] = report.paused_reason
        self.event("campaign_finished", fields, "warning" if report.paused_reason else "info")


def _counts(report: SendReport) -> dict[str, FieldValue]:
    return {"campaign": report.campaign_id, "sent": report.sent, "deferred": report.deferred,
            "failed": report.failed, "suppressed": report.suppressed}


def _outcome(report: SendReport) -> str:
    """Why this process stopped sending the campaign."""
    if report.paused_reason:
        return "paused"
    if report.campaign_stopped:
        return "stopped_by_someone_else"
    if report.interrupted:
        return "interrupted"
    return "done"
