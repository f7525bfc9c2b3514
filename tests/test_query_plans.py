"""Query plans that do not depend on luck: live-work indexes and fresh statistics, checked with EXPLAIN.

Claims, heartbeats and abandoned-claim checks must cost the same with a long history of finished
deliveries as with none, and a send started right after an import must not be planned as if the
list had a handful of members. Plans are asserted, never timings.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from psycopg.sql import Literal
from sending_helpers import make_campaign

from mailer.db import Database
from mailer.delivery.claims import Outcome, SqlDeliveryStore, mark_abandoned_claims
from mailer.lifecycle import start_campaign
from mailer.models import CampaignStatus, DeliveryState, utcnow
from mailer.recipients.importer import import_csv
from mailer.recipients.lists import create_list

Statement = tuple[str, Any]

LIVE_INDEXES = {"ix_deliveries_pending", "ix_deliveries_deferred", "ix_deliveries_in_flight"}


@pytest.fixture
def pg(postgres_url: str) -> Iterator[Database]:
    db = Database(postgres_url)
    db.upgrade()
    yield db
    db.dispose()


def captured(database: Database, action: Callable[[], object]) -> list[Statement]:
    """The statements `action` sends to the database that touch deliveries, with their parameters."""
    seen: list[Statement] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        if "deliveries" in statement:
            seen.append((statement, parameters))

    sa.event.listen(database.engine, "before_cursor_execute", record)
    try:
        action()
    finally:
        sa.event.remove(database.engine, "before_cursor_execute", record)
    assert seen
    return seen


def explain(database: Database, statement: Statement, *, generic: bool = False,
            analyze: bool = False) -> dict[str, Any]:
    """PostgreSQL's plan of one captured statement as JSON; `generic`: the plan a prepared
    statement gets once psycopg prepares it (after five runs), planned without its values."""
    sql, parameters = statement
    options = "FORMAT JSON, ANALYZE, BUFFERS, TIMING OFF" if analyze else "FORMAT JSON"
    with database.engine.connect() as conn:
        if not generic:
            raw = conn.exec_driver_sql(f"EXPLAIN ({options}) {sql}", parameters).scalar_one()
        else:
            numbered, values = _numbered(sql, parameters)
            conn.exec_driver_sql("SET LOCAL plan_cache_mode = force_generic_plan")
            conn.exec_driver_sql(f"PREPARE probe AS {numbered}")
            # EXECUTE takes its values as SQL literals: the statement's own types then apply
            driver = conn.connection.driver_connection
            literals = ", ".join(Literal(value).as_string(driver) for value in values)
            execute = f"EXECUTE probe({literals})" if values else "EXECUTE probe"
            raw = conn.exec_driver_sql(f"EXPLAIN ({options}) {execute}").scalar_one()
            conn.exec_driver_sql("DEALLOCATE probe")
        conn.rollback()  # EXPLAIN ANALYZE of an UPDATE runs it: nothing of it stays
    plan = raw if isinstance(raw, list) else json.loads(raw)
    return dict(plan[0]["Plan"])


def _numbered(sql: str, parameters: dict[str, Any]) -> tuple[str, list[Any]]:
    order: list[str] = []

    def number(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in order:
            order.append(name)
        return f"${order.index(name) + 1}"

    return re.sub(r"%\((\w+)\)s", number, sql), [parameters[name] for name in order]


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


def deliveries_access(plan: dict[str, Any]) -> list[str]:
    """How each plan node reads the deliveries table: its scan type and index."""
    # a bitmap scan names the table on its heap node and the index on the node beneath
    return [f"{node['Node Type']} {node.get('Index Name', '')}".strip()
            for node in nodes(plan)
            if node.get("Relation Name") == "deliveries" or "_deliveries" in node.get("Index Name", "")]


# -- a list with a history of finished deliveries, made in SQL ------------------------------------


def make_list(database: Database, members: int) -> int:
    """A list of `members` people made in SQL; returns its id."""
    now = utcnow()
    with database.session() as session:
        list_id = create_list(session, "news").id
        session.execute(sa.text(
            "INSERT INTO subscribers (email, email_normalized, name, attributes, created_at, updated_at) "
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :members) "
            "SELECT 'p' || i || '@example.com', 'p' || i || '@example.com', '', '{}', :now, :now FROM n"),
            {"members": members, "now": now})
        session.execute(sa.text(
            "INSERT INTO subscriptions (subscriber_id, list_id, status, consent_at, consent_source, created_at) "
            "SELECT id, :list, 'active', :now, 'test', :now FROM subscribers"), {"list": list_id, "now": now})
    return list_id


def add_history(database: Database, list_id: int, campaigns: int) -> None:
    """`campaigns` old campaigns sent to the whole list, then statistics as autovacuum leaves them."""
    old = [make_campaign(database, list_id, status=CampaignStatus.SENT) for _ in range(campaigns)]
    with database.session() as session:
        session.execute(sa.text(
            "INSERT INTO deliveries (campaign_id, subscriber_id, state, attempts, last_response, sent_at, "
            "created_at, updated_at) SELECT c, s.id, 'sent', 1, '250 ok', :now, :now, :now "
            "FROM unnest(CAST(:old AS integer[])) AS c CROSS JOIN subscribers AS s"),
            {"old": old, "now": utcnow()})
        session.execute(sa.text("ANALYZE"))


def start_live_campaign(database: Database, list_id: int) -> int:
    """A campaign sending to the list: 100 deliveries in flight (two workers), the rest pending."""
    live = make_campaign(database, list_id, status=CampaignStatus.SENDING)
    now = utcnow()
    with database.session() as session:
        session.execute(sa.text(
            "INSERT INTO deliveries (campaign_id, subscriber_id, state, attempts, last_response, claimed_by, "
            "claimed_at, created_at, updated_at) SELECT :live, id, "
            "CASE WHEN id <= 100 THEN 'sending' ELSE 'pending' END, 0, '', "
            "CASE WHEN id <= 100 THEN 'elsewhere:' || (id % 2) END, CASE WHEN id <= 100 THEN :now END, "
            ":now, :now FROM subscribers"), {"live": live, "now": now})
    return live


def live_work_statements(database: Database, campaign_id: int) -> dict[str, Statement]:
    """The claim, heartbeat and abandoned-claim check exactly as the mailer sends them."""
    store = SqlDeliveryStore(database, worker_id="elsewhere:1")
    later = utcnow() + dt.timedelta(hours=2)  # every claim in flight is stale by then

    def check_abandoned() -> None:
        with database.sessionmaker() as session, session.begin():
            mark_abandoned_claims(session, later, claim_timeout=3600)
            session.rollback()  # only its statements are wanted here

    claim = captured(database, lambda: store.claim_batch(campaign_id, 10, utcnow()))
    heartbeat = captured(database, lambda: store.refresh_claims(utcnow()))  # the batch it now holds
    select_stale, mark_in_doubt = captured(database, check_abandoned)
    due_retries, waiting = [s for s in claim if s[0].lstrip().startswith("UPDATE")]  # retries first
    return {
        "heartbeat": heartbeat[0],
        "abandoned check": select_stale,
        "mark in doubt": mark_in_doubt,
        "claim deferred": due_retries,
        "claim pending": waiting,
    }


EXPECTED_INDEX = {
    "heartbeat": "pk_deliveries",  # the claims it holds, by id
    "abandoned check": "ix_deliveries_in_flight",
    "mark in doubt": "ix_deliveries_in_flight",
    "claim deferred": "ix_deliveries_deferred",
    "claim pending": "ix_deliveries_pending",
}


def assert_live_work_plans(database: Database, statements: dict[str, Statement], *, tiny: bool = False) -> None:
    """Planned with its values and as a prepared statement, each statement reads deliveries
    through its live-work index, which holds no finished delivery, or by the ids the sender holds,
    and never scans the table. On a `tiny` table the heartbeat may read its few pages instead;
    it never walks the in-flight index, where every claim leaves a dead entry until a vacuum."""
    for name, statement in statements.items():
        for generic in (False, True):
            access = deliveries_access(explain(database, statement, generic=generic))
            if tiny and name == "heartbeat":
                assert not any("in_flight" in a for a in access), (name, generic, access)
                continue
            assert not any(a.startswith("Seq Scan") for a in access), (name, generic, access)
            assert any(a.endswith(EXPECTED_INDEX[name]) for a in access), (name, generic, access)


@pytest.mark.postgres
def test_claims_and_heartbeats_read_only_live_work_with_a_short_history_and_a_long_one(pg: Database) -> None:
    list_id = make_list(pg, members=200)
    add_history(pg, list_id, campaigns=1)  # 200 finished deliveries
    statements = live_work_statements(pg, start_live_campaign(pg, list_id))
    assert_live_work_plans(pg, statements, tiny=True)  # 400 rows in all
    add_history(pg, list_id, campaigns=99)  # 20,000 finished deliveries
    assert_live_work_plans(pg, statements)


def pending_claim_pages(database: Database, store: SqlDeliveryStore, campaign_id: int) -> int:
    """Pages read and written by the store's next claim of pending rows (run, then planned with
    EXPLAIN ANALYZE BUFFERS and rolled back): its work, whatever else the machine runs."""
    claim = captured(database, lambda: store.claim_batch(campaign_id, 100, utcnow()))
    pending = [s for s in claim if s[0].lstrip().startswith("UPDATE") and "pending" in s[0]]
    plan = explain(database, pending[0], analyze=True)
    return int(plan["Shared Hit Blocks"] + plan["Shared Read Blocks"])


@pytest.mark.postgres
def test_a_claim_late_in_a_long_send_reads_as_few_pages_as_the_first(pg: Database) -> None:
    # every claimed row leaves a dead entry at the front of the pending index until a vacuum
    # (autovacuum may be off, or far behind in a long send): a claim must not walk them
    campaign_id = make_campaign(pg, make_list(pg, members=20_000))
    with pg.session() as session:
        start_campaign(session, campaign_id, utcnow())
    store = SqlDeliveryStore(pg, worker_id="host:1")
    first = pending_claim_pages(pg, store, campaign_id)

    finished: list[Outcome] = []
    for _ in range(38):  # 19,000 sent, each claimed then recorded, as a sender does
        batch = store.claim_batch(campaign_id, 500, utcnow(), finished)
        finished = [Outcome(r.delivery_id, DeliveryState.SENT, 250, "250 ok") for r in batch.recipients]
    store.record_outcomes(campaign_id, finished, utcnow())
    late = pending_claim_pages(pg, store, campaign_id)

    assert late <= 2 * first + 10, (first, late)


def test_sqlite_claims_and_heartbeats_use_the_live_work_indexes(sqlite_url: str) -> None:
    database = Database(sqlite_url)
    database.upgrade()
    campaign_id = start_live_campaign(database, make_list(database, members=200))
    try:
        for name, (sql, parameters) in live_work_statements(database, campaign_id).items():
            with database.engine.connect() as conn:
                plan = " | ".join(row[-1] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", parameters))
            # a SCAN of the table itself, not of an index that holds only live work
            assert not re.search(r"SCAN deliveries(?! USING)", plan), (name, plan)
            # SQLite may seek a claim's campaign and state in the full index instead: as narrow
            ours = re.search(rf"INDEX {EXPECTED_INDEX[name]}\b", plan) or (
                name == "heartbeat" and "USING INTEGER PRIMARY KEY" in plan)
            seek = name.startswith("claim") and "ix_deliveries_claim (campaign_id=? AND state=?" in plan
            assert ours or seek, (name, plan)
    finally:
        database.dispose()


def _empty_list(database: Database) -> int:
    with database.session() as session:
        list_id = create_list(session, "news").id
    return list_id


# -- statistics after an import and a snapshot ----------------------------------------------------


def estimated_rows(database: Database, sql: str, **parameters: Any) -> int:
    with database.engine.connect() as conn:
        raw = conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {sql}", parameters).scalar_one()
    return int(raw[0]["Plan"]["Plan Rows"])


@pytest.mark.postgres
@pytest.mark.parametrize("members", [2_000, 20_000])
def test_a_send_right_after_an_import_is_planned_for_the_list_it_has(pg: Database, tmp_path: Path,
                                                                     members: int) -> None:
    with pg.session() as session:
        list_id = create_list(session, "news").id
    csv = tmp_path / "people.csv"
    csv.write_text("email,name\n" + "".join(f"p{i}@example.com,P {i}\n" for i in range(members)))
    assert import_csv(pg, csv, "news").added == members
    campaign_id = make_campaign(pg, list_id)
    with pg.session() as session:
        assert start_campaign(session, campaign_id, utcnow()) == members

    # the planner knows how many people the list and the send have (without ANALYZE it guesses
    # half a percent of the table, the cause of a plan that walks the whole list per batch)
    for sql, key in (("SELECT * FROM subscriptions WHERE list_id = %(v)s", list_id),
                     ("SELECT * FROM deliveries WHERE campaign_id = %(v)s", campaign_id)):
        assert members / 2 <= estimated_rows(pg, sql, v=key) <= members * 2, sql

    store = SqlDeliveryStore(pg, worker_id="host:1")
    statements = captured(pg, lambda: store.claim_batch(campaign_id, 100, utcnow()))
    load = next(s for s in statements if s[0].lstrip().startswith("SELECT deliveries.id"))
    plan = explain(pg, load, analyze=True)
    # the plan of a batch rests on what the planner expects at each step: expectations far from
    # the truth (5 rows for a whole list) are how a batch came to walk the list many times over
    misjudged = [(n["Node Type"], n.get("Relation Name", ""), n["Plan Rows"], n["Actual Rows"])
                 for n in nodes(plan) if not _close(n["Plan Rows"], n["Actual Rows"])]
    assert misjudged == []
    repeated = [n for n in nodes(plan) if n.get("Actual Loops", 1) > 1 and n.get("Actual Rows", 0) > 1]
    assert repeated == [], repeated


def _close(expected: float, actual: float) -> bool:
    return max(expected, 1) / max(actual, 1) <= 10 and max(actual, 1) / max(expected, 1) <= 10


def test_statistics_are_fresh_on_sqlite_after_an_import_and_a_snapshot(sqlite_url: str, tmp_path: Path) -> None:
    database = Database(sqlite_url)
    database.upgrade()
    try:
        list_id = _empty_list(database)
        csv = tmp_path / "people.csv"
        csv.write_text("email\n" + "".join(f"p{i}@example.com\n" for i in range(300)))
        import_csv(database, csv, "news")
        campaign_id = make_campaign(database, list_id)
        with database.session() as session:
            start_campaign(session, campaign_id, utcnow())
        with database.engine.connect() as conn:
            stats = {(table, index): stat.split()[0] for table, index, stat
                     in conn.exec_driver_sql("SELECT tbl, idx, stat FROM sqlite_stat1")}
        # sqlite_stat1 holds each index's row count first: the planner knows the list and the send
        assert stats["subscriptions", "ix_subscriptions_list_id"] == "300"
        assert stats["deliveries", "ix_deliveries_claim"] == "300"
    finally:
        database.dispose()


# -- the migration --------------------------------------------------------------------------------


def test_the_live_work_indexes_come_and_go_with_their_migration(db_url: str) -> None:
    database = Database(db_url)
    try:
        database.upgrade()
        assert _index_names(database) >= LIVE_INDEXES
        _downgrade(database, "0006_policy_blocks")
        assert not LIVE_INDEXES & _index_names(database)
        assert "ix_deliveries_claim" in _index_names(database)
        database.upgrade()
        assert _index_names(database) >= LIVE_INDEXES
    finally:
        database.dispose()


def _index_names(database: Database) -> set[str]:
    with database.engine.connect() as conn:
        return {str(index["name"]) for index in sa.inspect(conn).get_indexes("deliveries")}


def _downgrade(database: Database, revision: str) -> None:
    from alembic import command

    from mailer.db import alembic_config

    with database.engine.begin() as conn:
        config = alembic_config(database.url)
        config.attributes["connection"] = conn
        command.downgrade(config, revision)

