"""Migrations go from empty to head on SQLite and PostgreSQL, and the models match them."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from mailer.db import Database, address_hash, alembic_config, normalize_email
from mailer.models import Base


def test_migrations_reach_head_and_match_the_models(db_url: str) -> None:
    database = Database(db_url)
    try:
        assert database.current_revision() is None
        database.upgrade()
        heads = set(ScriptDirectory.from_config(alembic_config(db_url)).get_heads())
        assert set(database.current_revision().split(", ")) == heads  # type: ignore[union-attr]
        with database.engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
        database.upgrade()  # running it again is harmless
    finally:
        database.dispose()


def test_sqlite_runs_in_wal_mode_with_foreign_keys(sqlite_url: str) -> None:
    database = Database(sqlite_url)
    database.upgrade()
    with database.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    database.dispose()


def test_addresses_differing_only_in_case_are_one_person() -> None:
    assert normalize_email("  Ana.Lima@Example.COM ") == "ana.lima@example.com"
    assert address_hash("Ana.Lima@Example.COM") == address_hash("ana.lima@example.com")
    assert len(address_hash("x@example.com")) == 64


def test_tables_exist_after_upgrade(database: Database) -> None:
    names = set(sa.inspect(database.engine).get_table_names())
    assert {"mailing_lists", "subscribers", "subscriptions", "suppressions", "campaigns",
            "deliveries", "audit_events"} <= names


def test_ids_signed_into_links_are_never_reused(database: Database) -> None:
    """An erased person's unsubscribe link must never name the next person to join."""
    from mailer.models import Subscriber

    with database.session() as session:
        first = Subscriber(email="a@example.com", email_normalized="a@example.com")
        session.add(first)
        session.flush()
        erased_id = first.id
        session.delete(first)
    with database.session() as session:
        newcomer = Subscriber(email="b@example.com", email_normalized="b@example.com")
        session.add(newcomer)
        session.flush()
        assert newcomer.id != erased_id
