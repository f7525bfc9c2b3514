"""Database engine, sessions and migrations for SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from mailer.config import Config
from mailer.resources import resource_path


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
    return sa.create_engine(url, **kwargs)


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


def alembic_config(url: str) -> Any:
    """An Alembic Config pointing at the shipped migrations and the given database."""
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(resource_path("migrations")))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def sqlite_path(url: str) -> Path | None:
    """The file of a sqlite URL, or None for other databases and :memory:."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)
