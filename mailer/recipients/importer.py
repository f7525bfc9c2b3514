"""Streams a CSV of subscribers into a list in one transaction, in set-based chunks."""

from __future__ import annotations

import csv
import datetime as dt
import ipaddress
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import sqlalchemy as sa
from sqlalchemy.orm import Session

from mailer.db import Database, address_hash, analyze_tables, normalize_email
from mailer.errors import ImportFileError, InvalidInputError, path_text
from mailer.models import Base, Subscriber, Subscription, SubscriptionStatus, Suppression, utcnow
from mailer.recipients.lists import get_list
from mailer.recipients.subscribers import (
    check_attribute_key,
    check_attribute_value,
    check_email,
    check_name,
    merge_profile,
    new_subscription_status,
)

CHUNK_ROWS = 2000  # rows resolved per round of queries; bounds memory, not the file size
MAX_REPORTED_PROBLEMS = 1000  # per-row problems kept for the report; the rest are counted
CONSENT_COLUMNS = ("consent_at", "consent_ip", "consent_source")
# no value may hold a line break, so no row needs more; a longer line is refused unread
MAX_LINE_BYTES = 1024 * 1024
_SKIP_BYTES = 64 * 1024  # how much of an overlong line is read at a time while it is skipped
# Core tables: plain executemany, without the ORM's per-row bookkeeping
_SUBSCRIBERS = Base.metadata.tables["subscribers"]
_SUBSCRIPTIONS = Base.metadata.tables["subscriptions"]


@dataclass
class RowProblem:
    line: int
    reason: str


@dataclass
class ImportReport:
    """What an import did, or would do with --dry-run."""

    file: str
    list_name: str
    dry_run: bool = False
    rows: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    suppressed: int = 0
    unsubscribed: int = 0
    invalid: int = 0
    problems: list[RowProblem] = field(default_factory=list)

    def reject(self, line: int, reason: str) -> None:
        self.invalid += 1
        if len(self.problems) < MAX_REPORTED_PROBLEMS:
            self.problems.append(RowProblem(line, reason))

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "list": self.list_name,
            "dry_run": self.dry_run,
            "rows": self.rows,
            "added": self.added,
            "updated": self.updated,
            "already_subscribed": self.unchanged,
            "skipped_suppressed": self.suppressed,
            "skipped_unsubscribed": self.unsubscribed,
            "invalid": self.invalid,
            "problems": [{"line": p.line, "reason": p.reason} for p in self.problems],
        }


@dataclass
class _Row:
    line: int
    email: str
    key: str
    digest: str
    name: str | None
    attributes: dict[str, str]
    consent_at: dt.datetime | None
    consent_ip: str | None
    consent_source: str | None


def import_csv(
    database: Database, path: str | os.PathLike[str], list_name: str, dry_run: bool = False
) -> ImportReport:
    """Import a CSV file into a list; all of it or, on any file-level error, nothing.

    Raises ImportFileError for a missing, unreadable or non-UTF-8 file or one without an
    email column, NotFoundError for an unknown list. Bad rows are reported, not raised.
    """
    file = Path(path)
    report = ImportReport(file=str(file), list_name=list_name, dry_run=dry_run)
    try:
        handle = open(file, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise ImportFileError(f"{file}: no such file") from None
    except IsADirectoryError:
        raise ImportFileError(f"{file}: is a directory, not a CSV file") from None
    except OSError as exc:
        raise ImportFileError(f"{file}: {exc.strerror or exc}") from None
    source = f"import:{path_text(file.name)}"
    with handle, database.sessionmaker() as session:
        transaction = session.begin()
        try:
            mailing_list = get_list(session, list_name)
            lines = _decoded_lines(handle, file)
            columns = _read_header(lines, file)
            for chunk in _chunks(_parse_rows(lines, columns, report, file)):
                _apply_chunk(session, chunk, mailing_list.id, mailing_list.double_opt_in, source, report)
        except BaseException:
            transaction.rollback()
            raise
        if dry_run:
            transaction.rollback()
        else:
            transaction.commit()
    if report.added and not dry_run:
        # a send right after the import is planned on these statistics; once the import is
        # committed, so that nothing here can undo it
        with database.session() as session:
            analyze_tables(session, ["subscribers", "subscriptions"])
    return report


def _decoded_lines(handle: BinaryIO, file: Path) -> Iterator[tuple[int, str | None]]:
    """Each physical line (ended by LF or CRLF) with its number; None for one over MAX_LINE_BYTES.

    Lines are read with a cap and decoded one at a time, so a non-UTF-8 byte is reported with
    its line number and a gigabyte without a line break never sits in memory.
    """
    number = 0
    while raw := handle.readline(MAX_LINE_BYTES + 1):
        number += 1
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            while (rest := handle.readline(_SKIP_BYTES)) and not rest.endswith(b"\n"):
                pass
            yield number, None
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ImportFileError(f"{file}: line {number}: not UTF-8 text; save the file as UTF-8") from None
        yield number, text.removeprefix("\ufeff") if number == 1 else text


def _split_line(text: str | None) -> list[str]:
    """The fields of one physical line; raises InvalidInputError when it is not one row.

    Python's csv module lets a quoted field run on over the following lines until a closing
    quote, so one stray quote would swallow the rows after it. Since no value may hold a line
    break, a row is exactly one line: a quote still open at its end makes that line invalid,
    and the next line is read as a row of its own.
    """
    if text is None:
        raise InvalidInputError(f"the line is longer than {MAX_LINE_BYTES // (1024 * 1024)} MiB")
    body = text.removesuffix("\n").removesuffix("\r")
    if '"' not in body and "\r" not in body:
        return body.split(",")  # what the csv module makes of it, several times faster
    try:
        record = next(csv.reader((text if text.endswith("\n") else text + "\n",)))
    except csv.Error as exc:
        raise InvalidInputError(f"not a CSV row: {exc}") from None
    if any("\n" in cell or "\r" in cell for cell in record):
        raise InvalidInputError(
            "a quoted value is not closed on this line (a row is one line: values cannot hold line breaks)"
        )
    return record


def _is_blank(text: str | None) -> bool:
    """A line of nothing but spaces and commas (a spreadsheet's empty row) is not a row."""
    return text is not None and not text.replace(",", "").strip()


def _read_header(lines: Iterator[tuple[int, str | None]], file: Path) -> list[str]:
    _number, text = next(lines, (1, ""))
    if text is not None and not text.strip():
        raise ImportFileError(f"{file}: the file is empty; it needs a header row with an 'email' column")
    try:
        header = _split_line(text)
    except InvalidInputError as exc:
        raise ImportFileError(f"{file}: line 1: {exc}") from None
    columns = [c.strip().lower() for c in header]
    if "email" not in columns:
        raise ImportFileError(
            f"{file}: the header row has no 'email' column (found: {', '.join(columns) or 'nothing'})"
        )
    seen: set[str] = set()
    for position, column in enumerate(columns, start=1):
        if not column:
            # the values under a column without a name would belong to no attribute, lost unseen
            raise ImportFileError(
                f"{file}: line 1: column {position} has no name; name it or remove the column"
            )
        if column in seen:
            raise ImportFileError(f"{file}: the header row names the column {column!r} twice")
        seen.add(column)
    attributes: dict[str, str] = {}
    for column in columns:
        if column not in ("email", "name", *CONSENT_COLUMNS):
            key = _attribute_key(column, file)
            if key in attributes:
                # two values for one attribute: whichever won, the other would be lost unseen
                raise ImportFileError(
                    f"{file}: line 1: the columns {attributes[key]!r} and {column!r} both become the "
                    f"attribute {key!r}; rename or remove one"
                )
            attributes[key] = column
    return columns


def _parse_rows(
    lines: Iterator[tuple[int, str | None]], columns: list[str], report: ImportReport, file: Path
) -> Iterator[_Row]:
    width = len(columns)
    email_at = columns.index("email")
    attribute_columns = [
        (i, _attribute_key(c, file)) for i, c in enumerate(columns)
        if c not in ("email", "name", *CONSENT_COLUMNS)
    ]
    name_at = columns.index("name") if "name" in columns else None
    consent_at = {c: columns.index(c) for c in CONSENT_COLUMNS if c in columns}
    for line, text in lines:
        if _is_blank(text):
            continue
        report.rows += 1
        try:
            record = _split_line(text)
        except InvalidInputError as exc:
            report.reject(line, str(exc))
            continue
        if len(record) != width:
            report.reject(line, f"has {len(record)} fields; the header has {width}")
            continue
        try:
            email = check_email(record[email_at])
            name = check_name(record[name_at]) if name_at is not None else None
            attributes = {
                key: check_attribute_value(key, record[i].strip())
                for i, key in attribute_columns if record[i].strip()
            }
            consent = _parse_consent(record, consent_at)
        except InvalidInputError as exc:
            report.reject(line, str(exc))
            continue
        key = normalize_email(email)
        yield _Row(line, email, key, address_hash(key), name or None, attributes, *consent)


def _attribute_key(column: str, file: Path) -> str:
    """A column header as an attribute name: "First Name" becomes first_name."""
    key = re.sub(r"[^0-9a-z]+", "_", column.lower()).strip("_")
    if key[:1].isdigit():
        key = f"col_{key}"
    try:
        return check_attribute_key(key)
    except InvalidInputError as exc:
        raise ImportFileError(f"{file}: line 1: column {column!r}: {exc}") from None


def _parse_consent(
    record: list[str], at: dict[str, int]
) -> tuple[dt.datetime | None, str | None, str | None]:
    when: dt.datetime | None = None
    if "consent_at" in at and record[at["consent_at"]].strip():
        raw = record[at["consent_at"]].strip()
        try:
            when = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidInputError(f"consent_at {raw!r} is not an ISO-8601 date and time") from None
        when = when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)
        if when > utcnow() + dt.timedelta(days=1):
            raise InvalidInputError(f"consent_at {raw!r} is in the future")
    ip: str | None = None
    if "consent_ip" in at and record[at["consent_ip"]].strip():
        raw = record[at["consent_ip"]].strip()
        try:
            ip = str(ipaddress.ip_address(raw))
        except ValueError:
            raise InvalidInputError(f"consent_ip {raw!r} is not an IP address") from None
    source: str | None = None
    if "consent_source" in at and record[at["consent_source"]].strip():
        source = check_name(record[at["consent_source"]])
    return when, ip, source


def _chunks(rows: Iterator[_Row]) -> Iterator[list[_Row]]:
    # an address appearing twice goes into a later chunk, so it is resolved against the first
    chunk: list[_Row] = []
    keys: set[str] = set()
    for row in rows:
        if row.key in keys or len(chunk) >= CHUNK_ROWS:
            yield chunk
            chunk, keys = [], set()
        chunk.append(row)
        keys.add(row.key)
    if chunk:
        yield chunk


def _apply_chunk(
    session: Session,
    chunk: list[_Row],
    list_id: int,
    double_opt_in: bool,
    source: str,
    report: ImportReport,
) -> None:
    """Resolve a chunk with three lookups, then write it with bulk statements."""
    suppressed, existing, statuses = _look_up_chunk(session, chunk, list_id)
    now = utcnow()
    new_people: list[_Row] = []
    profile_updates: list[dict[str, Any]] = []
    to_subscribe: list[_Row] = []
    for row in chunk:
        if row.digest in suppressed:
            report.suppressed += 1
            continue
        known = existing.get(row.key)
        if known is None:
            new_people.append(row)
            continue
        sid, name, attrs = known
        profile = merge_profile(name, attrs, row.name, row.attributes)
        changed = bool(profile.changed)
        if changed:
            profile_updates.append(
                {"b_id": sid, "name": profile.name, "attributes": profile.attributes, "updated_at": now}
            )
        status = statuses.get(sid)
        if status is None:
            to_subscribe.append(row)
        elif status is SubscriptionStatus.UNSUBSCRIBED:
            report.unsubscribed += 1
        elif changed:
            report.updated += 1
        else:
            report.unchanged += 1
    if new_people:
        session.execute(
            sa.insert(_SUBSCRIBERS),
            [
                {"email": r.email, "email_normalized": r.key, "name": r.name or "",
                 "attributes": r.attributes, "created_at": now, "updated_at": now}
                for r in new_people
            ],
        )
        to_subscribe.extend(new_people)
    if profile_updates:
        session.execute(
            sa.update(_SUBSCRIBERS).where(_SUBSCRIBERS.c.id == sa.bindparam("b_id")), profile_updates
        )
    if to_subscribe:
        _subscribe_rows(session, to_subscribe, list_id, double_opt_in, source, now)
        report.added += len(to_subscribe)


def _look_up_chunk(
    session: Session, chunk: list[_Row], list_id: int
) -> tuple[set[str], dict[str, tuple[int, str, dict[str, Any]]], dict[int, SubscriptionStatus]]:
    """The chunk's suppressed hashes, its known people by address, and their status on the list."""
    suppressed = set(
        session.scalars(
            sa.select(Suppression.address_hash).where(Suppression.address_hash.in_([r.digest for r in chunk]))
        )
    )
    existing: dict[str, tuple[int, str, dict[str, Any]]] = {
        key: (sid, name, attrs)
        for sid, key, name, attrs in session.execute(
            sa.select(Subscriber.id, Subscriber.email_normalized, Subscriber.name, Subscriber.attributes)
            .where(Subscriber.email_normalized.in_([r.key for r in chunk]))
        )
    }
    statuses: dict[int, SubscriptionStatus] = {
        sid: status
        for sid, status in session.execute(
            sa.select(Subscription.subscriber_id, Subscription.status).where(
                Subscription.list_id == list_id,
                Subscription.subscriber_id.in_([sid for sid, _n, _a in existing.values()]),
            )
        )
    }
    return suppressed, existing, statuses


def _subscribe_rows(
    session: Session, rows: list[_Row], list_id: int, double_opt_in: bool, source: str, now: dt.datetime
) -> None:
    """Subscribe the chunk's people (all already in subscribers) to the list."""
    status, confirmed_at = new_subscription_status(double_opt_in, now)
    columns = _SUBSCRIPTIONS.c
    plain = [r.key for r in rows if r.consent_at is None and r.consent_ip is None and r.consent_source is None]
    if plain:
        # rows without consent details of their own: one INSERT ... SELECT instead of a row each
        session.execute(
            sa.insert(_SUBSCRIPTIONS).from_select(
                ["subscriber_id", "list_id", "status", "consent_at", "consent_source", "consent_ip",
                 "consent_user_agent", "confirmed_at", "created_at"],
                sa.select(
                    _SUBSCRIBERS.c.id,
                    sa.literal(list_id),
                    sa.literal(status, columns.status.type),
                    sa.literal(now, columns.consent_at.type),
                    sa.literal(source[:200]),
                    sa.null(),
                    sa.null(),
                    sa.literal(confirmed_at, columns.confirmed_at.type),
                    sa.literal(now, columns.created_at.type),
                ).where(_SUBSCRIBERS.c.email_normalized.in_(plain)),
            )
        )
    detailed = [r for r in rows if r.consent_at or r.consent_ip or r.consent_source]
    if detailed:
        ids = dict(
            session.execute(
                sa.select(_SUBSCRIBERS.c.email_normalized, _SUBSCRIBERS.c.id)
                .where(_SUBSCRIBERS.c.email_normalized.in_([r.key for r in detailed]))
            ).all()
        )
        session.execute(
            sa.insert(_SUBSCRIPTIONS),
            [
                {"subscriber_id": ids[row.key], "list_id": list_id, "status": status,
                 "consent_at": row.consent_at or now,
                 # both where the row came from and how the person gave consent there
                 "consent_source": (f"{source} ({row.consent_source})" if row.consent_source
                                    else source)[:200],
                 "consent_ip": row.consent_ip, "consent_user_agent": None,
                 "confirmed_at": confirmed_at, "created_at": now}
                for row in detailed
            ],
        )
