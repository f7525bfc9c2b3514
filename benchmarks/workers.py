"""How fast `mailer worker` processes send a queued campaign on PostgreSQL, one and two of them.

    .venv/bin/python benchmarks/workers.py [-n 20000] [--workers 1,2]

Needs PostgreSQL ($MAILER_BENCH_POSTGRES_URL, else $MAILER_TEST_POSTGRES_URL; a schema of its own
is created and dropped) and sends into Postfix's smtp-sink (or the asyncio sink of send.py). For
each worker count, a new campaign to the same list is handed over with `campaign send --queue`
(the time that command takes is printed, beside that of `campaign status` as a baseline), then that many `mailer worker` processes send it, as an
operator runs them. Printed: msg/s from the queue to the last recorded delivery, the peak number
of database connections the workers held, their log lines, and the ratio to one worker.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy as sa
from send import SECRET, start_sink  # type: ignore[import-not-found]

from mailer.db import Database, normalize_email
from mailer.models import (
    Delivery,
    DeliveryState,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    utcnow,
)


def mailer(config: Path, *args: str, **popen: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "mailer", "--config", str(config), *args],
                            text=True, **popen)  # type: ignore[call-overload]


def setup(directory: Path, url: str, port: int, n: int) -> Path:
    config = directory / "mailer.toml"
    config.write_text(
        f'[database]\nurl = "{url}"\n\n[unsubscribe]\nsecret_keys = ["{SECRET}"]\n\n'
        f'[smtp]\nhost = "127.0.0.1"\nport = {port}\nstarttls = "off"\nconnections = 4\n',
        encoding="utf-8")
    database = Database(url)
    database.upgrade()
    subprocess.run([sys.executable, "-m", "mailer", "--config", str(config), "list", "create", "news",
                    "--title", "Harmony News"], check=True, capture_output=True)
    now = utcnow()
    with database.session() as session:
        list_id = session.scalar(sa.text("SELECT id FROM mailing_lists WHERE name = 'news'"))
        for start in range(0, n, 5000):
            rows = [f"reader{i:07d}@example.com" for i in range(start, min(n, start + 5000))]
            ids = session.scalars(sa.insert(Subscriber).returning(Subscriber.id), [
                {"email": a, "email_normalized": normalize_email(a), "name": "Reader", "attributes": {},
                 "created_at": now, "updated_at": now} for a in rows]).all()
            session.execute(sa.insert(Subscription), [
                {"subscriber_id": sid, "list_id": list_id, "status": SubscriptionStatus.ACTIVE,
                 "consent_at": now, "consent_source": "benchmark", "confirmed_at": now, "created_at": now}
                for sid in ids])
    database.dispose()
    return config


def run(config: Path, database: Database, app_name: str, workers: int,
        n: int) -> tuple[float, float, float, int, int]:
    created = subprocess.run(
        [sys.executable, "-m", "mailer", "--config", str(config), "campaign", "create", "--list", "news",
         "--subject", "Welcome to Harmony News", "--template", "welcome"],
        check=True, capture_output=True, text=True)
    campaign_id = int(created.stdout.strip().splitlines()[-1])
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "mailer", "--config", str(config), "campaign", "send",
                    str(campaign_id), "--queue"], check=True, capture_output=True)
    queue_seconds = time.monotonic() - started
    # the baseline of that figure: a command that starts, opens the database and reads the campaign
    before = time.monotonic()
    subprocess.run([sys.executable, "-m", "mailer", "--config", str(config), "campaign", "status",
                    str(campaign_id)], check=True, capture_output=True)
    status_seconds = time.monotonic() - before
    procs = [mailer(config, "worker", "--poll-seconds", "0.2", "--progress-every", "5",
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(workers)]
    peak, sent = 0, 0
    try:
        while sent < n:
            time.sleep(0.5)
            with database.session() as session:
                sent = session.scalar(sa.select(sa.func.count()).select_from(Delivery).where(
                    Delivery.campaign_id == campaign_id, Delivery.state == DeliveryState.SENT)) or 0
                peak = max(peak, session.scalar(sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = :name"),
                    {"name": app_name}) or 0)
        elapsed = time.monotonic() - started
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        log_lines = sum(len(proc.communicate(timeout=60)[1].splitlines()) for proc in procs)
    return n / elapsed, queue_seconds, status_seconds, peak, log_lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--recipients", type=int, default=20_000)
    parser.add_argument("--workers", default="1,2", help="worker counts to run, comma-separated")
    parser.add_argument("--sink", choices=["auto", "asyncio", "postfix"], default="auto")
    args = parser.parse_args()
    base = os.environ.get("MAILER_BENCH_POSTGRES_URL") or os.environ.get("MAILER_TEST_POSTGRES_URL")
    if not base:
        raise SystemExit("set MAILER_BENCH_POSTGRES_URL to a PostgreSQL database this benchmark may use")
    load = os.getloadavg()[0]
    schema, app_name = f"bench_{uuid.uuid4().hex[:8]}", f"bench_workers_{os.getpid()}"
    admin = sa.create_engine(base)
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    joiner = "&" if "?" in base else "?"
    url = f"{base}{joiner}options=-csearch_path%3D{schema}&application_name={app_name}"
    proc, port, sink_name = start_sink(args.sink)
    figures = []
    try:
        with tempfile.TemporaryDirectory(prefix="mailer-bench-") as tmp:
            config = setup(Path(tmp), url, port, args.recipients)
            database = Database(url.replace(app_name, app_name + "_watch"))
            for count in (int(w) for w in args.workers.split(",")):
                figures.append((count, *run(config, database, app_name, count, args.recipients)))
            database.dispose()
    finally:
        proc.terminate()
        proc.wait()
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()
    print(f"sink:        {sink_name}")
    print(f"recipients:  {args.recipients:,} per campaign, PostgreSQL, 4 SMTP connections per worker, "
          f"load average before: {load:.1f}, cores: {os.cpu_count()}")
    one = figures[0][1]
    for count, rate, queue_seconds, status_seconds, peak, lines in figures:
        print(f"{count} worker(s): {rate:8.0f} msg/s  ratio {rate / one:4.2f}  `send --queue` took "
              f"{queue_seconds:4.2f} s (`campaign status`: {status_seconds:4.2f} s)  "
              f"peak DB connections {peak}  log lines {lines}")


if __name__ == "__main__":
    main()
