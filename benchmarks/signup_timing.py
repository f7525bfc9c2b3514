"""How long a web sign-up takes to answer, by kind of address, with a slow relay.

The answer page is the same for every address; its timing must not tell them apart either. A
new address is the only one that gets a confirmation message, so if that message were sent
before the answer, a slow relay would make new addresses slow. This runs the app (Flask's test
client, in-process) on a temporary SQLite database with an aiosmtpd relay that takes
`--relay-delay` seconds per message, signs up N new, N already subscribed and N opted-out
addresses in turn, and prints the median and p95 answer time of each kind and the ratio of each
to the already-subscribed baseline (target: within 1.5x).

    $ .venv/bin/python benchmarks/signup_timing.py --requests 200 --relay-delay 0.2
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from mailer.config import config_from_dict
from mailer.db import Database
from mailer.models import SuppressionReason
from mailer.recipients.lists import create_list
from mailer.recipients.subscribers import Consent, add_subscriber
from mailer.recipients.suppression import suppress_address
from mailer.web.app import create_app
from mailer.web.subscribe import SIGNUP_THREAD

TARGET_RATIO = 1.5


class SlowRelay:
    """Accepts every message after a delay, as a busy or distant relay does."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.received = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        await asyncio.sleep(self.delay)
        self.received += 1
        return "250 OK"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def seed(database: Database, count: int) -> None:
    with database.session() as session:
        create_list(session, "news", "News")
        for n in range(count):
            add_subscriber(session, f"old{n}@example.com", "news", Consent(source="benchmark"))
            suppress_address(session, f"gone{n}@example.com", SuppressionReason.UNSUBSCRIBED, "benchmark")


def timed(client: Any, address: str) -> float:
    started = time.perf_counter()
    response = client.post("/subscribe/news", data={"email": address, "consent": "yes"})
    elapsed = time.perf_counter() - started
    assert response.status_code == 200, response.status_code
    return elapsed


def report(name: str, times: list[float], baseline: float) -> bool:
    median = statistics.median(times)
    p95 = sorted(times)[int(len(times) * 0.95) - 1]
    ratio = median / baseline
    print(f"{name:<12} median {median * 1000:7.2f} ms  p95 {p95 * 1000:7.2f} ms  "
          f"ratio to subscribed {ratio:5.2f}x (target <= {TARGET_RATIO}x)")
    return ratio <= TARGET_RATIO


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200, help="sign-ups of each kind")
    parser.add_argument("--relay-delay", type=float, default=0.2, help="seconds the relay takes per message")
    args = parser.parse_args()
    relay = SlowRelay(args.relay_delay)
    port = _free_port()
    controller = Controller(relay, hostname="127.0.0.1", port=port)
    controller.start()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'mailer.db'}"
        database = Database(url)
        database.upgrade()
        seed(database, args.requests)
        limit = f"{args.requests * 10} per hour"
        config = config_from_dict({
            "database": {"url": url}, "unsubscribe": {"secret_keys": ["benchmark-signing-key-0123456789"]},
            "smtp": {"host": "127.0.0.1", "port": port, "starttls": "off", "timeout": 30},
            "web": {"signup_limit_per_ip": limit, "signup_limit_per_address": limit},
        })
        app = create_app(config, {"TESTING": True})
        client = app.test_client()
        times: dict[str, list[float]] = {"new": [], "subscribed": [], "opted out": []}
        for n in range(args.requests):  # interleaved, so load on the machine hits every kind alike
            times["subscribed"].append(timed(client, f"old{n}@example.com"))
            times["new"].append(timed(client, f"new{n}@example.com"))
            times["opted out"].append(timed(client, f"gone{n}@example.com"))
        for thread in threading.enumerate():
            if thread.name == SIGNUP_THREAD:
                thread.join()
        app.extensions["mailer"].database.dispose()
        database.dispose()
    controller.stop()
    print(f"{args.requests} sign-ups of each kind, relay {args.relay_delay * 1000:.0f} ms per message, "
          f"{relay.received} confirmations delivered, load {os.getloadavg()[0]:.2f}")
    baseline = statistics.median(times["subscribed"])
    ok = all([report(name, values, baseline) for name, values in times.items()])
    ok = ok and relay.received == args.requests
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
