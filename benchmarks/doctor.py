"""Measures what the quick doctor adds to `campaign send`, and how long a full `mailer doctor` takes.

The quick doctor asks DNS for the DKIM record (and SPF when the relay's addresses are known)
before a send. Measured in the same run: the baseline (nothing to ask: DKIM off, relay on
loopback), against a DNS server on loopback that answers, and against one that never answers
(bounded by the quick time-out, after which the answer is UNKNOWN and the send goes on).

    $ python benchmarks/doctor.py --rounds 50
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from dns_helpers import dns_server
from smtp_faults import faulty_smtp_server

from mailer.config import Config, config_from_dict
from mailer.content.dkim import generate_key
from mailer.doctor.checkup import QUICK_TIMEOUT, quick_doctor, run_doctor

TARGET_ADDED_MS = 50.0  # the quick doctor against an answering DNS server, per send


def timed(rounds: int, call: Callable[[], object]) -> float:
    """Median milliseconds of one call."""
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def config(nameserver: str, key: Path | None, smtp_port: int = 25) -> Config:
    data: dict[str, dict[str, object]] = {
        "smtp": {"host": "127.0.0.1", "port": smtp_port, "starttls": "off", "timeout": 5},
        "unsubscribe": {"secret_keys": ["benchmark-signing-key-0123"]},
        "doctor": {"nameserver": nameserver, "sending_ips": ["192.0.2.10"] if key else []},
    }
    if key is not None:
        data["dkim"] = {"domain": "harmonymails.com", "selector": "hm1", "private_key": str(key)}
    return config_from_dict(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    record = generate_key(folder / "hm1.pem", "harmonymails.com", "hm1")
    zone = {
        "harmonymails.com": [("TXT", "v=spf1 ip4:192.0.2.0/24 -all"), ("A", "192.0.2.80")],
        "bounces.harmonymails.com": [("TXT", "v=spf1 include:harmonymails.com -all"), ("MX", "mx.harmonymails.com")],
        "hm1._domainkey.harmonymails.com": [("TXT", record.value)],
        "_dmarc.harmonymails.com": [("TXT", "v=DMARC1; p=quarantine")],
    }
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # reads nothing, answers nothing
    silent.bind(("127.0.0.1", 0))
    with dns_server(zone) as (address, _), faulty_smtp_server() as smtp:
        baseline = timed(args.rounds, lambda: quick_doctor(config(address, None)))
        answered = timed(args.rounds, lambda: quick_doctor(config(address, folder / "hm1.pem")))
        full = timed(max(args.rounds // 10, 3), lambda: run_doctor(config(address, folder / "hm1.pem", smtp.port)))
        dead = f"127.0.0.1:{silent.getsockname()[1]}"
        unanswered = timed(3, lambda: quick_doctor(config(dead, folder / "hm1.pem")))
    silent.close()
    added = answered - baseline
    print(f"quick doctor, nothing to ask (baseline): {baseline:8.2f} ms per send")
    print(f"quick doctor, DKIM + SPF answered:        {answered:8.2f} ms per send "
          f"({answered / baseline:.1f}x baseline, +{added:.2f} ms)")
    print(f"quick doctor, DNS never answers:         {unanswered:8.2f} ms per send "
          f"(time-out {QUICK_TIMEOUT * 1000:.0f} ms, then UNKNOWN and no more questions)")
    print(f"full mailer doctor (DNS + relay + config): {full:6.2f} ms")
    print(f"target: +{TARGET_ADDED_MS:.0f} ms per send with answering DNS: {'met' if added <= TARGET_ADDED_MS else 'MISSED'}")


if __name__ == "__main__":
    main()
