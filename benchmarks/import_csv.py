"""Measures `mailer subscriber import` on SQLite: rows per second and peak memory.

Generates a CSV of N rows, imports it with the real CLI in a child process (so its peak RSS
is its own), and, in the same run, loads the same rows with plain sqlite3 executemany and no
validation: the raw limit our import is compared against.

    $ python benchmarks/import_csv.py --rows 200000
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_ROWS_PER_SECOND = 20_000
TARGET_PEAK_RSS_MB = 200


def generate_csv(path: Path, rows: int) -> None:
    rng = random.Random(42)
    cities = ["Lisbon", "Laguna Beach", "Zürich", "Osaka", "São Paulo", "Nairobi"]
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["email", "name", "city", "plan"])
        for i in range(rows):
            writer.writerow([f"person{i}@example{i % 97}.com", f"Person {i}", rng.choice(cities),
                             rng.choice(["free", "gold"])])


def run_import(workdir: Path, csv_path: Path) -> tuple[float, float, str]:
    """Import with the real CLI in a child; returns seconds, child peak RSS in MB and its output."""
    config = workdir / "mailer.toml"
    config.write_text(f'[database]\nurl = "sqlite:///{workdir / "bench.db"}"\n', encoding="utf-8")
    env = {**os.environ, "MAILER_CONFIG": str(config)}
    mailer = [sys.executable, "-m", "mailer"]
    subprocess.run([*mailer, "db", "upgrade"], env=env, check=True, capture_output=True)
    subprocess.run([*mailer, "list", "create", "bench"], env=env, check=True, capture_output=True)
    # the child is measured alone: a helper process runs it and reports its own children's peak
    probe = (
        "import resource, subprocess, sys, time;"
        "t = time.perf_counter();"
        "r = subprocess.run(sys.argv[1:], capture_output=True, text=True);"
        "d = time.perf_counter() - t;"
        "print(d, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024);"
        "print(r.stdout + r.stderr, end='');"
        "sys.exit(r.returncode)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, *mailer, "subscriber", "import", str(csv_path), "--list", "bench"],
        env=env, capture_output=True, text=True, check=True,
    )
    first, _, rest = done.stdout.partition("\n")
    seconds, rss = (float(v) for v in first.split())
    return seconds, rss, rest


def run_raw_baseline(workdir: Path, csv_path: Path) -> float:
    """Plain sqlite3: read the CSV, executemany into two tables, one commit; no validation."""
    db = sqlite3.connect(workdir / "raw.db")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE subscribers (id INTEGER PRIMARY KEY, email TEXT, "
               "email_normalized TEXT UNIQUE, name TEXT, attributes TEXT)")
    db.execute("CREATE TABLE subscriptions (id INTEGER PRIMARY KEY, subscriber_id INTEGER, list_id INTEGER)")
    start = time.perf_counter()
    with open(csv_path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        next(reader)
        batch: list[tuple[str, str, str, str]] = []
        for email, name, city, plan in reader:
            batch.append((email, email.lower(), name, f'{{"city": "{city}", "plan": "{plan}"}}'))
            if len(batch) == 2000:
                db.executemany("INSERT INTO subscribers (email, email_normalized, name, attributes) "
                               "VALUES (?, ?, ?, ?)", batch)
                batch.clear()
        db.executemany("INSERT INTO subscribers (email, email_normalized, name, attributes) "
                       "VALUES (?, ?, ?, ?)", batch)
    db.execute("INSERT INTO subscriptions (subscriber_id, list_id) SELECT id, 1 FROM subscribers")
    db.commit()
    elapsed = time.perf_counter() - start
    db.close()
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000, help="rows in the generated CSV")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mailer-import-bench-") as tmp:
        workdir = Path(tmp)
        csv_path = workdir / "people.csv"
        generate_csv(csv_path, args.rows)
        size_mb = csv_path.stat().st_size / 1e6
        seconds, rss_mb, output = run_import(workdir, csv_path)
        raw_seconds = run_raw_baseline(workdir, csv_path)
    rate = args.rows / seconds
    raw_rate = args.rows / raw_seconds
    own_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"rows:                 {args.rows:,} ({size_mb:.1f} MB CSV)")
    print(f"mailer import:        {seconds:.2f} s  {rate:,.0f} rows/s  (target >= {TARGET_ROWS_PER_SECOND:,})")
    print(f"raw sqlite3 baseline: {raw_seconds:.2f} s  {raw_rate:,.0f} rows/s  (no validation, no checks)")
    print(f"ratio import/raw:     {rate / raw_rate:.2f}")
    print(f"peak RSS of import:   {rss_mb:.0f} MB  (target < {TARGET_PEAK_RSS_MB} MB; harness {own_rss:.0f} MB)")
    print("import said:")
    print("".join(f"  {line}\n" for line in output.splitlines()[:8]), end="")
    ok = rate >= TARGET_ROWS_PER_SECOND and rss_mb < TARGET_PEAK_RSS_MB
    print("targets met" if ok else "targets NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
