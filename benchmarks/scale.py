"""Sending cost as lists and history grow: a million subscribers and five million finished deliveries
against ten thousand and none, on PostgreSQL, sent by one and by two `mailer worker` processes.

    $ .venv/bin/python benchmarks/scale.py                                   # 1M list, 5M history
    $ .venv/bin/python benchmarks/scale.py --subscribers 100000 --history 500000 --seconds 30

Each scenario gets a database of its own (`scale_bench`, created and dropped again, never the
tests' database), filled in SQL with generate_series: the list, then earlier campaigns sent to it
(the history), vacuumed and analyzed as autovacuum would leave them. The campaign is then started
as `campaign send` starts it (audience snapshot, ANALYZE) and handed to `mailer worker` processes
that send into Postfix's smtp-sink (or the asyncio sink of benchmarks/send.py).

Figures:
- claim time per batch: the claim of `batch_size` deliveries (what every batch of a send runs),
  the heartbeat and the abandoned-claim check of a sender holding one batch in flight, each the
  median of repeated runs rolled back, at the start of the send, in the middle and at the end.
  Sending the whole million on this shared machine takes too long, so the middle and end are made
  in SQL: half, then all but two batches, of the deliveries are claimed, then updated to sent,
  leaving the dead row versions and index entries a real send leaves (no vacuum in between).
- msg/s per worker count, over a fixed window of --seconds once the first message is out (the
  small list is requeued in SQL before each window so there is always work).
- the database's CPU: the CPU seconds of the PostgreSQL backends serving the benchmark database,
  per wall second (1.0 = one core), and as a share of all the CPU the send used (workers, sink and
  those backends); PostgreSQL's own background processes are not counted.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from send import SECRET, start_sink

from mailer.campaigns import create_campaign
from mailer.config import Config, load_config
from mailer.db import Database
from mailer.delivery.claims import (
    Outcome,
    SqlDeliveryStore,
    claim_due_deliveries,
    mark_abandoned_claims,
)
from mailer.lifecycle import start_send
from mailer.models import DeliveryState, utcnow
from mailer.recipients.lists import create_list

DATABASE = "scale_bench"
PROBES = 31  # runs of each query per measurement; the median is printed
MAILER = str(Path(sys.executable).with_name("mailer"))


@dataclass
class Scenario:
    name: str
    subscribers: int
    history: int
    claims: dict[str, dict[str, float]] = field(default_factory=dict)  # moment -> query -> ms
    rates: dict[int, float] = field(default_factory=dict)  # workers -> msg/s
    db_cpu: dict[int, tuple[float, float]] = field(default_factory=dict)  # workers -> (cores, share)
    setup_seconds: float = 0.0
    snapshot_seconds: float = 0.0


# -- the database ------------------------------------------------------------------------------


@contextmanager
def bench_database(server: str) -> Iterator[str]:
    """CREATE DATABASE scale_bench on the server, yield its URL, DROP it whatever happens."""
    admin = sa.create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        conn.exec_driver_sql(f"CREATE DATABASE {DATABASE}")
    try:
        yield f"{server}/{DATABASE}"
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        admin.dispose()


def fill(database: Database, config: Config, subscribers: int, history: int) -> int:
    """The list and its history in SQL; returns the new campaign's id (a draft)."""
    with database.session() as session:
        create_list(session, "news", "Harmony News")
        # made while the list is empty: the gate that renders for its kinds of subscriber runs at
        # `campaign send`, and is timed there
        campaign_id = create_campaign(session, config, list_name="news", subject="Welcome to Harmony News",
                                      template="welcome").campaign.id
        session.execute(sa.text(
            "INSERT INTO subscribers (email, email_normalized, name, attributes, created_at, updated_at) "
            "SELECT 'reader' || i || '@example.com', 'reader' || i || '@example.com', 'Reader ' || i, "
            "'{\"city\": \"Lisbon\"}', now(), now() FROM generate_series(1, :n) AS i"), {"n": subscribers})
        session.execute(sa.text(
            "INSERT INTO subscriptions (subscriber_id, list_id, status, consent_at, consent_source, "
            "confirmed_at, created_at) SELECT subscribers.id, list_id, 'active', now(), 'benchmark', now(), now() "
            "FROM subscribers, campaigns WHERE campaigns.id = :c"), {"c": campaign_id})
    for number in range(-(-history // subscribers) if history else 0):
        with database.session() as session:
            old = session.scalar(sa.text(
                "INSERT INTO campaigns (kind, list_id, subject, from_address, template_name, html_template, "
                "text_template, status, status_reason, notice_reason, started_at, finished_at, created_at) "
                "SELECT kind, list_id, 'Earlier news ' || :n, from_address, template_name, html_template, "
                "text_template, 'sent', '', '', now(), now(), now() FROM campaigns WHERE id = :c RETURNING id"),
                {"n": number, "c": campaign_id})
            rows = min(subscribers, history - number * subscribers)
            session.execute(sa.text(
                "INSERT INTO deliveries (campaign_id, subscriber_id, state, attempts, last_code, "
                "last_response, sent_at, created_at, updated_at) SELECT :campaign, id, 'sent', 1, 250, "
                "'250 2.0.0 Ok: queued', now(), now(), now() FROM subscribers WHERE id <= :rows"),
                {"campaign": old, "rows": rows})
        print(f"  history: {min(history, (number + 1) * subscribers):,} finished deliveries", flush=True)
    vacuum_analyze(database)
    return campaign_id


def vacuum_analyze(database: Database) -> None:
    with database.engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("VACUUM ANALYZE")


def write_config(directory: Path, url: str, port: int, render_processes: int) -> Config:
    path = directory / "mailer.toml"
    path.write_text(
        f'[database]\nurl = "{url}"\n\n[unsubscribe]\nsecret_keys = ["{SECRET}"]\n\n'
        f'[smtp]\nhost = "127.0.0.1"\nport = {port}\nstarttls = "off"\nconnections = 4\n\n'
        f"[sending]\nbatch_size = 100\nrender_processes = {render_processes}\n",
        encoding="utf-8")
    return load_config(path, environ={})


# -- claim time per batch ----------------------------------------------------------------------


def median_ms(run: Callable[[], object]) -> float:
    times = []
    for _ in range(PROBES):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def measure_claims(database: Database, campaign_id: int, batch_size: int) -> dict[str, float]:
    """The claim, heartbeat and abandoned-claim check as a busy sender runs them: it holds one batch
    in flight and its next claim starts after the last id the send has claimed. The claims and
    checks are rolled back; the batch held is put back in the queue afterwards."""
    store = SqlDeliveryStore(database, worker_id="scale-bench:1")
    with database.session() as session:
        store.claimed_upto[campaign_id] = int(session.scalar(sa.text(
            "SELECT coalesce(max(id), 0) FROM deliveries WHERE campaign_id = :c AND state <> 'pending'"),
            {"c": campaign_id}) or 0)
    held = store.claim_batch(campaign_id, batch_size, utcnow())

    def rolled_back(action: Callable[[sa.orm.Session], object]) -> Callable[[], object]:
        def run() -> None:
            with database.sessionmaker() as session, session.begin():
                action(session)
                session.rollback()
        return run

    def claim(session: sa.orm.Session) -> object:
        return claim_due_deliveries(session, campaign_id, batch_size, utcnow(), store.worker_id,
                                    after=store.claimed_upto[campaign_id])

    figures = {
        "claim pages": float(claim_buffers(database, claim)),
        "claim": median_ms(rolled_back(claim)),
        "heartbeat": median_ms(lambda: store.refresh_claims(utcnow())),
        "abandoned check": median_ms(rolled_back(lambda s: mark_abandoned_claims(s, utcnow(), 300.0))),
    }
    store.record_outcomes(campaign_id, [Outcome(r.delivery_id, DeliveryState.PENDING) for r in held.recipients],
                          utcnow())
    return figures


def claim_buffers(database: Database, claim: Callable[[sa.orm.Session], object]) -> int:
    """Pages the claim of one batch reads and writes (EXPLAIN ANALYZE, BUFFERS, rolled back):
    the work of a claim, which unlike its time does not depend on what else the machine runs."""
    statements: list[tuple[str, Any]] = []

    def record(_conn: object, _cursor: object, statement: str, parameters: Any, *_: object) -> None:
        if statement.lstrip().startswith("UPDATE"):
            statements.append((statement, parameters))

    with database.sessionmaker() as session, session.begin():
        sa.event.listen(database.engine, "before_cursor_execute", record)
        try:
            claim(session)
        finally:
            sa.event.remove(database.engine, "before_cursor_execute", record)
        session.rollback()
    total = 0
    with database.engine.connect() as conn:
        for statement, parameters in statements:
            plan = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {statement}",
                                        parameters).scalar_one()[0]
            top = plan["Plan"]
            total += int(top["Shared Hit Blocks"] + top["Shared Read Blocks"])
        conn.rollback()
    return total


def finish_share(database: Database, campaign_id: int, share: float, keep: int) -> None:
    """Send the first `share` of the campaign's deliveries, leaving at least `keep`, as a sender
    would have by then: each row claimed (pending to sending), then sent, in transactions of their
    own, so the live-work indexes keep the dead entries a real send leaves until the next vacuum."""
    with database.session() as session:
        total = session.scalar(sa.text("SELECT count(*) FROM deliveries WHERE campaign_id = :c"),
                               {"c": campaign_id}) or 0
        done = min(int(total * share), total - keep)
        session.execute(sa.text(
            # a claim takes `batch_size` rows at a time, each batch with its own claimed_at
            "UPDATE deliveries SET state = 'sending', claimed_by = 'scale-bench:0', "
            "claimed_at = now() + (id / 100) * interval '1 millisecond', "
            "updated_at = now() WHERE id IN (SELECT id FROM deliveries WHERE campaign_id = :c "
            "AND state = 'pending' ORDER BY id LIMIT :n)"),
            {"c": campaign_id, "n": max(0, done - sent_count(session, campaign_id))})
    with database.session() as session:
        session.execute(sa.text(
            "UPDATE deliveries SET state = 'sent', attempts = 1, last_code = 250, sent_at = now(), "
            "claimed_by = NULL, updated_at = now() WHERE state = 'sending' AND claimed_by = 'scale-bench:0'"))


def sent_count(session: sa.orm.Session, campaign_id: int) -> int:
    return int(session.scalar(sa.text(
        "SELECT count(*) FROM deliveries WHERE campaign_id = :c AND state <> 'pending'"), {"c": campaign_id}) or 0)


# -- workers -------------------------------------------------------------------------------------


def requeue(database: Database, campaign_id: int) -> None:
    """The small list sends out within a window: put it back in the queue before the next one."""
    with database.session() as session:
        session.execute(sa.text("UPDATE deliveries SET state = 'pending', attempts = 0, claimed_by = NULL, "
                                "sent_at = NULL WHERE campaign_id = :c AND state <> 'pending'"), {"c": campaign_id})
        session.execute(sa.text("UPDATE campaigns SET status = 'sending', finished_at = NULL WHERE id = :c"),
                        {"c": campaign_id})


def backend_cpu(database: Database) -> float:
    """CPU seconds so far of the PostgreSQL backends serving the benchmark database."""
    with database.engine.connect() as conn:
        pids = conn.exec_driver_sql("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                                    "AND pid <> pg_backend_pid()").scalars().all()
    return sum(_cpu(pid) for pid in pids)


def _cpu(pid: int) -> float:
    try:
        times = psutil.Process(pid).cpu_times()
        return float(times.user + times.system)
    except psutil.Error:
        return 0.0


def run_workers(database: Database, config_path: Path, campaign_id: int, workers: int,
                seconds: float) -> tuple[float, float, float, float]:
    """Start `workers` processes, measure over the window; returns (msg/s, db CPU s, all CPU s, wall s)."""
    env = {**os.environ, "MAILER_CONFIG": str(config_path)}
    procs = [subprocess.Popen([MAILER, "worker", "--poll-seconds", "0.5"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for _ in range(workers)]
    try:
        with database.session() as session:
            before = sent_count(session, campaign_id)
            total = int(session.scalar(sa.text("SELECT count(*) FROM deliveries WHERE campaign_id = :c"),
                                       {"c": campaign_id}) or 0)
        count = before
        deadline = time.monotonic() + 120
        while count == before and time.monotonic() < deadline:  # started: imports, first claim
            time.sleep(0.2)
            with database.session() as session:
                count = sent_count(session, campaign_id)
        started, first = time.monotonic(), count
        db_before, all_before = backend_cpu(database), _tree_cpu(procs)
        while time.monotonic() - started < seconds and count < total * 0.98:
            time.sleep(0.5)
            with database.session() as session:
                count = sent_count(session, campaign_id)
        wall = time.monotonic() - started
        db_cpu = backend_cpu(database) - db_before
        all_cpu = _tree_cpu(procs) - all_before + db_cpu
        return (count - first) / wall, db_cpu, all_cpu, wall
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=60)


def _tree_cpu(procs: list[subprocess.Popen[bytes]]) -> float:
    total = 0.0
    for proc in procs:
        try:
            parent = psutil.Process(proc.pid)
            total += sum(_cpu(p.pid) for p in [parent, *parent.children(recursive=True)])
        except psutil.Error:
            pass
    return total


# -- one scenario, then both side by side ------------------------------------------------------


def run_scenario(scenario: Scenario, server: str, port: int, args: argparse.Namespace,
                 sink: psutil.Process) -> None:
    with bench_database(server) as url, tempfile.TemporaryDirectory(prefix="mailer-scale-") as tmp:
        config = write_config(Path(tmp), url, port, args.render_processes)
        database = Database(url)
        try:
            database.upgrade()
            started = time.perf_counter()
            campaign_id = fill(database, config, scenario.subscribers, scenario.history)
            scenario.setup_seconds = time.perf_counter() - started
            started = time.perf_counter()
            start_send(config, database, campaign_id)  # the audience snapshot, as `campaign send` runs it
            scenario.snapshot_seconds = time.perf_counter() - started
            scenario.claims["start"] = measure_claims(database, campaign_id, config.sending.batch_size)
            for workers in args.workers:
                if scenario.history == 0:
                    requeue(database, campaign_id)
                sink_before = _cpu(sink.pid)
                rate, db_cpu, all_cpu, wall = run_workers(database, Path(tmp) / "mailer.toml", campaign_id,
                                                          workers, args.seconds)
                all_cpu += _cpu(sink.pid) - sink_before
                scenario.rates[workers] = rate
                scenario.db_cpu[workers] = (db_cpu / wall, db_cpu / all_cpu if all_cpu else 0.0)
                print(f"  {scenario.name}: {workers} worker(s) {rate:,.0f} msg/s", flush=True)
            if scenario.history == 0:
                # the windows sent the small list over and over (requeue): a real send leaves
                # none of those dead entries behind its claims, so start its middle and end clean
                requeue(database, campaign_id)
                vacuum_analyze(database)
            for moment, share in (("middle", 0.5), ("end", 1.0)):
                # the end: all sent but the batch the measuring sender holds and the one it claims
                finish_share(database, campaign_id, share, keep=2 * config.sending.batch_size)
                scenario.claims[moment] = measure_claims(database, campaign_id, config.sending.batch_size)
        finally:
            database.dispose()


def report(scenarios: list[Scenario], args: argparse.Namespace) -> None:
    large, small = scenarios
    print()
    print(f"load at the end: {_load()} (1, 5, 15 min) on {os.cpu_count()} cores; "
          f"render processes per worker: {args.render_processes}")
    print("middle and end of the send made in SQL (half, then all but two batches of the deliveries claimed, "
          "then sent, no vacuum); msg/s over a window of at most "
          f"{args.seconds:.0f} s once the first message was out")
    print(f"{'':34}{large.name:>24}{small.name:>24}{'ratio':>8}")
    for scenario in scenarios:
        print(f"  {scenario.name}: filled in {scenario.setup_seconds:.1f} s; campaign send's start "
              f"(gate, audience snapshot, ANALYZE) {scenario.snapshot_seconds:.1f} s")
    for moment in ("start", "middle", "end"):
        for query in ("claim pages", "claim", "heartbeat", "abandoned check"):
            a, b = large.claims[moment][query], small.claims[moment][query]
            label = f"{query}, {moment}" if query == "claim pages" else f"{query} ms, {moment}"
            print(f"{label:34}{a:24.2f}{b:24.2f}{a / b:8.2f}")
    for workers in args.workers:
        a, b = large.rates[workers], small.rates[workers]
        print(f"{f'msg/s, {workers} worker(s)':34}{a:24.0f}{b:24.0f}{a / b:8.2f}")
    if len(args.workers) > 1:
        one, more = args.workers[0], args.workers[-1]
        for scenario in scenarios:
            print(f"  {scenario.name}: {more} workers / {one}: "
                  f"{scenario.rates[more] / scenario.rates[one]:.2f}x (target >= 1.3)")
    for workers in args.workers:
        for scenario in scenarios:
            cores, share = scenario.db_cpu[workers]
            print(f"  {scenario.name}, {workers} worker(s): database CPU {cores:.2f} cores, "
                  f"{share:.0%} of the send's CPU (target < 15%)")
    worst = max(large.claims[m]["claim"] / small.claims[m]["claim"] for m in ("start", "middle", "end"))
    print(f"claim time, large / small, worst moment: {worst:.2f}x (target <= 1.5)")


def _load() -> str:
    return " ".join(f"{figure:.2f}" for figure in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", default=os.environ.get("MAILER_BENCH_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432"),
                        help="PostgreSQL server URL without a database name")
    parser.add_argument("--subscribers", type=int, default=1_000_000)
    parser.add_argument("--history", type=int, default=5_000_000, help="finished deliveries of earlier campaigns")
    parser.add_argument("--small", type=int, default=10_000, help="subscribers of the list with no history")
    parser.add_argument("--seconds", type=float, default=60.0, help="window of each msg/s measurement")
    parser.add_argument("--workers", type=lambda text: [int(n) for n in text.split(",")], default=[1, 2])
    parser.add_argument("-r", "--render-processes", type=int, default=0,
                        help="sending.render_processes of each worker (0: one process per worker)")
    parser.add_argument("--sink", choices=["auto", "asyncio", "postfix"], default="auto")
    args = parser.parse_args()
    proc, port, sink_name = start_sink(args.sink)
    print(f"sink: {sink_name}", flush=True)
    print(f"load at the start: {_load()} (1, 5, 15 min) on {os.cpu_count()} cores", flush=True)
    scenarios = [Scenario(f"{args.subscribers:,} + {args.history:,} done", args.subscribers, args.history),
                 Scenario(f"{args.small:,} + none", args.small, 0)]
    try:
        for scenario in scenarios:
            print(f"scenario {scenario.name} ...", flush=True)
            run_scenario(scenario, args.server, port, args, psutil.Process(proc.pid))
    finally:
        proc.terminate()
        proc.wait()
    report(scenarios, args)


if __name__ == "__main__":
    main()
