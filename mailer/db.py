"""Database engine, sessions and migrations for SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from mailer.config import Config, public_url
from mailer.errors import MailerError
from mailer.resources import resource_path


class MissingDriverError(MailerError):
    """database.url names a driver module that is not installed."""


def normalize_email(address: str) -> str:
    """The form that makes two spellings of an address one person: trimmed, lower case."""
    return address.strip().lower()


def address_hash(address: str) -> str:
    """sha256 of the normalized address: what a suppression keeps after erasure."""
    return hashlib.sha256(normalize_email(address).encode("utf-8")).hexdigest()


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine; SQLite gets WAL, foreign keys and a busy timeout on every connection."""
    if url.startswith("sqlite"):
        kwargs.setdefault("connect_args", {}).setdefault("timeout", 30)
        engine = sa.create_engine(url, **kwargs)
        _overwrite_deleted_content(engine)
        _create_files_private(engine, url)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # pysqlite's own transaction handling is replaced by explicit BEGIN below,
            # so that a write transaction takes its lock up front and never deadlocks
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: sa.Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.get("write", True) else "BEGIN")

        return engine
    kwargs.setdefault("pool_pre_ping", True)
    try:
        return sa.create_engine(url, **kwargs)
    except ImportError as exc:
        # SQLAlchemy imports the driver here: without it, one line and the fix, not a traceback
        raise MissingDriverError(_missing_driver_message(url, exc)) from None


def _missing_driver_message(url: str, exc: ImportError) -> str:
    parsed = sa.engine.make_url(url)
    module = exc.name or parsed.get_driver_name()
    why = str(exc).strip().splitlines()[0] if str(exc).strip() else "cannot be imported"
    fix = ("pip install 'harmony-mailer[postgres]'" if parsed.get_backend_name() == "postgresql"
           else f"install the Python module {module}")
    return f"database.url {public_url(url)} needs the Python module {module} ({why}); run: {fix}"


class Database:
    """One engine and its session factory for one configured database."""

    def __init__(self, url: str, **engine_kwargs: Any) -> None:
        self.url = url
        self.engine = make_engine(url, **engine_kwargs)
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def from_config(cls, config: Config) -> Database:
        return cls(config.database.url)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose transaction commits on success and rolls back on any error."""
        with self.sessionmaker() as session, session.begin():
            yield session

    def upgrade(self, revision: str = "heads") -> None:
        """Run the Alembic migrations up to `revision`."""
        from alembic import command

        with self.engine.begin() as conn:
            cfg = alembic_config(self.url)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)

    def current_revision(self) -> str | None:
        # a plain read of Alembic's own table: every command asks, and loading Alembic for it
        # would cost an MTA's pipe a tenth of a second per message
        with self.engine.connect() as conn:
            if not sa.inspect(conn).has_table("alembic_version"):
                return None
            heads = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all()
        return ", ".join(sorted(heads)) or None

    def dispose(self) -> None:
        self.engine.dispose()


# rows SQLite's ANALYZE reads per index: enough for its planner, and quick on a million-row table
SQLITE_ANALYSIS_LIMIT = 1000


def analyze_tables(session: Session, tables: Sequence[str]) -> None:
    """Fresh planner statistics for tables the caller has just filled (an import, an audience snapshot).

    Until statistics catch up (autovacuum may be minutes behind, or off), PostgreSQL plans a
    send to a list imported a moment ago as if the list had a handful of members, and walks
    the whole list for every batch. Runs in the caller's transaction, whose own new rows
    ANALYZE counts; PostgreSQL skips a table that another ANALYZE or VACUUM holds rather than
    wait for it, and only warns (never fails) for a role that does not own the tables.
    """
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        session.execute(sa.text("ANALYZE (SKIP_LOCKED) " + ", ".join(tables)))
    elif dialect == "sqlite":
        session.execute(sa.text(f"PRAGMA analysis_limit={SQLITE_ANALYSIS_LIMIT}"))
        for table in tables:
            session.execute(sa.text(f"ANALYZE {table}"))


def alembic_config(url: str) -> Any:
    """An Alembic Config pointing at the shipped migrations and the given database."""
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(resource_path("migrations")))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


PRIVATE_FILE_MODE = 0o600  # subscribers' addresses and consent records: for the mailer's own user only


def create_private_file(path: Path) -> bool:
    """Create an empty database file readable by its owner only, if it does not exist yet.

    SQLite gives the -wal, -shm and -journal files it makes later the mode of the database
    file, so they are private too. Creating the file ourselves, rather than changing the umask
    around the first connect, leaves the process's umask alone for other threads. Returns
    True when it created the file.
    """
    if not path.parent.is_dir():
        return False  # SQLite reports the missing folder in its own words
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def _create_files_private(engine: Engine, url: str) -> None:
    """Whichever connection comes first, the database file it creates is private."""
    path = sqlite_path(url)
    if path is None or sa.engine.make_url(url).query.get("uri"):
        return  # a "file:" URI names its file in SQLite's own syntax: leave it to SQLite

    @event.listens_for(engine, "do_connect")
    def _create_private_file(*_args: Any) -> None:
        create_private_file(path)


def shared_sqlite_files(url: str) -> list[Path]:
    """The database file and its companions that users other than the owner may read."""
    path = sqlite_path(url)
    if path is None:
        return []
    candidates = [path, *(path.with_name(path.name + suffix) for suffix in ("-wal", "-shm", "-journal"))]
    return [p for p in candidates if p.exists() and p.stat().st_mode & 0o077]


def sqlite_path(url: str) -> Path | None:
    """The file of a sqlite URL, or None for other databases and :memory:."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def _overwrite_deleted_content(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _secure_delete(dbapi_conn: Any, _record: Any) -> None:
        # an erased person's rows must not linger in free pages of mailer.db or in the WAL's
        # copies of them; every connection may delete, so every connection zeroes what it frees
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA secure_delete=ON")
        cur.close()


# a reader (mailer serve in the middle of a page) usually finishes in milliseconds; one that
# keeps a transaction open longer than this is reported rather than waited for
CHECKPOINT_ATTEMPTS = 5
CHECKPOINT_WAIT = 0.2  # seconds between attempts, and the busy timeout of each


class DiskPurge(NamedTuple):
    """Whether deleted rows have left the database files, and if not, why."""

    done: bool
    reason: str = ""


def truncate_sqlite_wal(engine: Engine, attempts: int = CHECKPOINT_ATTEMPTS,
                        wait: float = CHECKPOINT_WAIT) -> DiskPurge:
    """Copy the WAL into the database file and truncate it to zero bytes, so that old copies
    of deleted rows are no longer anywhere in the files.

    It cannot finish while another connection, in any process, is inside a read transaction
    that still sees the WAL: it is retried `attempts` times and then reported as not done.
    """
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        try:
            # the checkpoint waits on readers through the busy handler; 30 s would hang the command
            cur.execute(f"PRAGMA busy_timeout={int(wait * 1000)}")
            for attempt in range(attempts):
                busy, _log, _copied = cur.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                if not busy:
                    return DiskPurge(True)
                if attempt + 1 < attempts:
                    time.sleep(wait)
            return DiskPurge(False, "another process holds a read transaction open on the database")
        finally:
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()
    finally:
        raw.close()


def vacuum_tables(engine: Engine, tables: list[sa.Table]) -> DiskPurge:
    """PostgreSQL: VACUUM the tables so their deleted rows are pruned rather than kept as dead
    tuples until autovacuum comes by.

    VACUUM cannot run inside a transaction block, so it runs on a connection of its own in
    autocommit. Raises nothing: a failure (e.g. a role that may not vacuum) is reported.
    """
    with engine.connect() as conn:
        quote = conn.dialect.identifier_preparer.format_table
        try:
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
                "VACUUM " + ", ".join(quote(table) for table in tables))
        except sa.exc.DBAPIError as exc:
            return DiskPurge(False, f"VACUUM failed: {str(exc.orig).strip().splitlines()[0]}")
    return DiskPurge(True)
