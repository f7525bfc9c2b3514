"""Measures how long the `mailer` command takes to start, next to a bare Python in the same run.

Prints the median of --runs wall-clock times for `python -c pass` (the floor), `mailer --help`,
and `mailer inbound process -` fed one DSN on stdin (what an MTA's pipe pays per bounce), with
each figure's ratio to the floor.

    $ python benchmarks/startup.py --runs 5
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_HELP_SECONDS = 0.3
TARGET_INBOUND_SECONDS = 0.5
DSN = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "inbound" / "postfix_hard_bounce.eml"


def mailer_command() -> list[str]:
    """The console script an MTA or a person runs, from the same environment as this Python."""
    script = Path(sys.executable).with_name("mailer")
    return [str(script)] if script.exists() else [sys.executable, "-m", "mailer"]


def median_seconds(command: list[str], runs: int, env: dict[str, str], stdin: bytes = b"") -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run(command, input=stdin, env=env, capture_output=True)
        times.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.decode()[-500:]}")
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="runs per command; the median is shown")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="mailer-startup-"))
    try:
        config = workdir / "mailer.toml"
        config.write_text(f'[database]\nurl = "sqlite:///{workdir / "bench.db"}"\n', encoding="utf-8")
        env = {**os.environ, "MAILER_CONFIG": str(config), "MAILER_SECRET_KEYS": "startup-benchmark-key-0123456789"}
        mailer = mailer_command()
        subprocess.run([*mailer, "db", "upgrade"], env=env, check=True, capture_output=True)

        floor = median_seconds([sys.executable, "-c", "pass"], args.runs, env)
        help_time = median_seconds([*mailer, "--help"], args.runs, env)
        dsn = DSN.read_bytes()
        inbound_time = median_seconds([*mailer, "inbound", "process", "-"], args.runs, env, stdin=dsn)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"median of {args.runs} runs, load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(f"  python -c pass               {floor:6.3f} s")
    print(f"  mailer --help                {help_time:6.3f} s   {help_time / floor:5.1f}x python   "
          f"(target <= {TARGET_HELP_SECONDS} s)")
    print(f"  mailer inbound process - DSN {inbound_time:6.3f} s   {inbound_time / floor:5.1f}x python   "
          f"(target <= {TARGET_INBOUND_SECONDS} s)")


if __name__ == "__main__":
    main()
