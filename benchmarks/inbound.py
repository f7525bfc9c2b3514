"""Measures what one bounce costs through an MTA's pipe and through the LMTP listener, side by side.

Sends --messages distinct hard-bounce DSNs (each for its own delivery) to `mailer inbound serve
--lmtp` over --connections LMTP connections at once, as Postfix does with its connection cache,
and pipes --piped others one by one into `mailer inbound process -`. Prints each path's
wall-clock time and CPU time per message and its messages per second, with the ratio. Every DSN
must be acted on (a 250 hard_bounce reply, or exit 0), or the run fails.

    $ python benchmarks/inbound.py --messages 2000 --connections 4
    $ python benchmarks/inbound.py --database postgresql+psycopg://postgres@127.0.0.1/bench
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import sqlalchemy as sa

from mailer.config import config_from_dict
from mailer.db import Database
from mailer.models import Campaign, CampaignStatus, Delivery, DeliveryState
from mailer.recipients.lists import create_list
from mailer.recipients.subscribers import Consent, add_subscriber
from mailer.verp import make_return_path

TARGET_PER_SECOND = 300
KEY = "inbound-benchmark-key-0123456789abcdef"
DSN = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "inbound" / "postfix_hard_bounce.eml"


def mailer_command() -> list[str]:
    script = Path(sys.executable).with_name("mailer")
    return [str(script)] if script.exists() else [sys.executable, "-m", "mailer"]


def make_dsns(url: str, count: int) -> list[bytes]:
    """A sent campaign to `count` people, and one hard bounce for each delivery."""
    config = config_from_dict({"unsubscribe": {"secret_keys": [KEY]}})
    database = Database(url)
    database.upgrade()
    template = DSN.read_text(encoding="utf-8")
    dsns = []
    with database.session() as session:
        mailing_list = create_list(session, "bench", title="Bench")
        campaign = Campaign(list_id=mailing_list.id, subject="Bench", from_address="news@harmonymails.com",
                            html_template="<html><body>Hi</body></html>", status=CampaignStatus.SENT)
        session.add(campaign)
        session.flush()
        for number in range(count):
            address = f"gone{number}@example.net"
            subscriber, _outcome = add_subscriber(session, address, "bench", Consent(source="benchmark"))
            assert subscriber is not None
            delivery = Delivery(campaign_id=campaign.id, subscriber_id=subscriber.id, state=DeliveryState.SENT,
                                attempts=1, last_code=250)
            session.add(delivery)
            session.flush()
            text = (template.replace("{{VERP}}", make_return_path(config, delivery.id))
                    .replace("{{RCPT}}", address).replace("{{TOKEN}}", "")
                    .replace("Message-Id: <20261125094007.", f"Message-Id: <bench{number}.", 1))
            dsns.append(text.encode("utf-8"))
    database.dispose()
    return dsns


def count_failed(url: str) -> int:
    database = Database(url)
    try:
        with database.session() as session:
            return session.scalar(sa.select(sa.func.count()).select_from(Delivery)
                                  .where(Delivery.state == DeliveryState.FAILED)) or 0
    finally:
        database.dispose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def send_over_lmtp(port: int, dsns: list[bytes], errors: list[str]) -> None:
    client = smtplib.LMTP("127.0.0.1", port, timeout=60)
    try:
        client.ehlo_or_helo_if_needed()
        for raw in dsns:
            client.mail("")
            client.rcpt("bounces@harmonymails.com")
            code, text = client.data(raw)
            if code != 250 or not text.startswith(b"2.0.0 hard_bounce"):
                errors.append(f"{code} {text.decode()}")
    finally:
        client.quit()


def cpu_seconds(process: psutil.Process) -> float:
    """User and system CPU of the listener and its worker processes."""
    return sum(sum(each.cpu_times()[:2]) for each in [process, *process.children(recursive=True)])


def run_lmtp(env: dict[str, str], dsns: list[bytes], connections: int, workers: int) -> tuple[float, float]:
    """Wall-clock seconds for all DSNs, and the listener's CPU seconds spent on them."""
    port = free_port()
    chosen = ["--workers", str(workers)] if workers else []
    server = subprocess.Popen([*mailer_command(), "inbound", "serve", "--lmtp", f"127.0.0.1:{port}", *chosen],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert server.stdout is not None
        server.stdout.readline()  # listening
        # the listener prints a line per message: read them, or its pipe fills and it stalls
        drain = threading.Thread(target=server.stdout.read, daemon=True)
        drain.start()
        watched = psutil.Process(server.pid)
        cpu_before = cpu_seconds(watched)
        errors: list[str] = []
        shares = [dsns[n::connections] for n in range(connections)]
        threads = [threading.Thread(target=send_over_lmtp, args=(port, share, errors)) for share in shares]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - start
        cpu = cpu_seconds(watched) - cpu_before
        if errors:
            raise SystemExit(f"{len(errors)} DSNs not acted on over LMTP, the first: {errors[0]}")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    return wall, cpu


def run_pipe(env: dict[str, str], dsns: list[bytes]) -> tuple[float, float]:
    """Wall-clock and CPU seconds for piping each DSN into its own `mailer inbound process -`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    for raw in dsns:
        done = subprocess.run([*mailer_command(), "inbound", "process", "-"], input=raw, env=env,
                              capture_output=True)
        if done.returncode != 0 or b"hard bounces: 1" not in done.stdout:
            raise SystemExit(f"the pipe did not act on a DSN ({done.returncode}): {done.stderr.decode()[-300:]}")
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2000, help="DSNs sent over LMTP")
    parser.add_argument("--connections", type=int, default=4, help="LMTP connections at once")
    parser.add_argument("--piped", type=int, default=10, help="DSNs piped, one process each")
    parser.add_argument("--workers", type=int, default=0,
                        help="the listener's worker processes (default: as `inbound serve` chooses)")
    parser.add_argument("--database", default="", help="a database URL (default: a new SQLite file)")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="mailer-inbound-bench-"))
    try:
        url = args.database or f"sqlite:///{workdir / 'bench.db'}"
        dsns = make_dsns(url, args.messages + args.piped)
        config = workdir / "mailer.toml"
        config.write_text(f'[database]\nurl = "{url}"\n', encoding="utf-8")
        env = {**os.environ, "MAILER_CONFIG": str(config), "MAILER_SECRET_KEYS": KEY}
        args.workers = args.workers or min(os.cpu_count() or 1, 4)
        lmtp_wall, lmtp_cpu = run_lmtp(env, dsns[:args.messages], args.connections, args.workers)
        pipe_wall, pipe_cpu = run_pipe(env, dsns[args.messages:])
        acted = count_failed(url)
        if acted != len(dsns):
            raise SystemExit(f"only {acted} of {len(dsns)} deliveries were failed by their bounce")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    lmtp_rate, pipe_rate = args.messages / lmtp_wall, args.piped / pipe_wall
    print(f"{args.messages} DSNs over LMTP ({args.connections} connections, {args.workers} workers), "
          f"{args.piped} piped; "
          f"{url.partition(':')[0]}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(f"  {'':28} {'wall/msg':>10} {'CPU/msg':>10} {'msgs/s':>9}")
    print(f"  {'inbound process - (pipe)':28} {pipe_wall / args.piped * 1000:8.1f}ms "
          f"{pipe_cpu / args.piped * 1000:8.1f}ms {pipe_rate:9.1f}")
    print(f"  {'inbound serve --lmtp':28} {lmtp_wall / args.messages * 1000:8.1f}ms "
          f"{lmtp_cpu / args.messages * 1000:8.1f}ms {lmtp_rate:9.1f}   "
          f"{lmtp_rate / pipe_rate:5.1f}x the pipe (target >= {TARGET_PER_SECOND}/s)")
    # what the CPU cost alone allows, were the cores not shared with anything else
    cores = min(args.workers, os.cpu_count() or 1)
    print(f"  CPU-bound ceiling of the listener on {cores} core(s): {cores * args.messages / lmtp_cpu:.0f}/s; "
          f"of the pipe: {(os.cpu_count() or 1) * args.piped / pipe_cpu:.1f}/s")


if __name__ == "__main__":
    main()
