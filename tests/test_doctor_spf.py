"""The SPF evaluator against records served by a DNS server on loopback, one mechanism at a time."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from dns_helpers import dns_server

from mailer.config import DoctorConfig
from mailer.doctor.resolver import Lookup, Unanswerable
from mailer.doctor.spf import SpfResult, evaluate

ZONE = {
    "ip.test": [("TXT", "v=spf1 ip4:192.0.2.0/25 ip6:2001:db8::/32 -all")],
    "a.test": [("TXT", "v=spf1 a a:other.a.test/24 ~all"), ("A", "192.0.2.1")],
    "other.a.test": [("A", "198.51.100.7")],
    "mx.test": [("TXT", "v=spf1 mx -all"), ("MX", "mail.mx.test")],
    "mail.mx.test": [("A", "203.0.113.9"), ("AAAA", "2001:db8::25")],
    "include.test": [("TXT", "v=spf1 include:ip.test ?all")],
    "redirect.test": [("TXT", "v=spf1 redirect=ip.test")],
    "dangling.test": [("TXT", "v=spf1 include:nowhere.test -all")],
    "exists.test": [("TXT", "v=spf1 exists:%{i}.allow.exists.test -all")],
    "192.0.2.200.allow.exists.test": [("A", "127.0.0.2")],
    "macro.test": [("TXT", "v=spf1 exists:%{l}.exists.test -all")],
    "loop.test": [("TXT", "v=spf1 include:loop.test -all")],
    "bad.test": [("TXT", "v=spf1 ip4:300.1.1.1 -all")],
    "other.test": [("TXT", "google-site-verification=abc"), ("TXT", "v=spf10 x")],
}


@pytest.fixture(scope="module")
def lookup() -> Iterator[Lookup]:
    with dns_server(ZONE) as (address, _):
        yield Lookup(DoctorConfig(nameserver=address))


@pytest.mark.parametrize(("domain", "ip", "result"), [
    ("ip.test", "192.0.2.100", SpfResult.PASS),
    ("ip.test", "192.0.2.200", SpfResult.FAIL),
    ("ip.test", "2001:db8::1", SpfResult.PASS),
    ("a.test", "192.0.2.1", SpfResult.PASS),
    ("a.test", "198.51.100.200", SpfResult.PASS),
    ("a.test", "198.51.101.1", SpfResult.SOFTFAIL),
    ("mx.test", "203.0.113.9", SpfResult.PASS),
    ("mx.test", "2001:db8::25", SpfResult.PASS),
    ("mx.test", "203.0.113.10", SpfResult.FAIL),
    ("include.test", "192.0.2.5", SpfResult.PASS),
    ("include.test", "198.51.100.1", SpfResult.NEUTRAL),
    ("redirect.test", "192.0.2.5", SpfResult.PASS),
    ("redirect.test", "198.51.100.1", SpfResult.FAIL),
    ("exists.test", "192.0.2.200", SpfResult.PASS),
    ("exists.test", "192.0.2.201", SpfResult.FAIL),
    ("other.test", "192.0.2.1", SpfResult.NONE),
])
def test_each_mechanism_gives_what_a_receiver_would(lookup: Lookup, domain: str, ip: str,
                                                     result: SpfResult) -> None:
    assert evaluate(lookup, domain, ip).result is result


@pytest.mark.parametrize(("domain", "reason"), [
    ("dangling.test", "include:nowhere.test, which has no SPF record"),
    ("macro.test", "needs the sender's address"),
    ("loop.test", "more than 10 DNS look-ups"),
    ("bad.test", "is not an address or network"),
])
def test_broken_records_are_permanent_errors_with_the_reason(lookup: Lookup, domain: str, reason: str) -> None:
    evaluation = evaluate(lookup, domain, "192.0.2.1")
    assert evaluation.result is SpfResult.PERMERROR
    assert reason in evaluation.reason


def test_look_ups_are_counted_through_includes(lookup: Lookup) -> None:
    assert evaluate(lookup, "include.test", "192.0.2.5").lookups == 1
    assert evaluate(lookup, "a.test", "198.51.100.200").lookups == 2


def _drain(sock: socket.socket) -> int:
    count = 0
    while True:
        try:
            sock.recv(4096)
        except BlockingIOError:
            return count
        count += 1


def test_a_resolver_that_times_out_is_not_asked_again() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # reads, never answers
        silent.bind(("127.0.0.1", 0))
        silent.setblocking(False)
        lookup = Lookup(DoctorConfig(nameserver=f"127.0.0.1:{silent.getsockname()[1]}"), timeout=0.3)
        with pytest.raises(Unanswerable, match="no answer in time"):
            lookup.txt("ip.test")
        assert _drain(silent) >= 1
        with pytest.raises(Unanswerable, match=r"for ip\.test TXT"):
            lookup.mx("mx.test")
        assert _drain(silent) == 0
