"""A DNS server on loopback answering from a zone the test builds, so no test asks the internet."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dnslib import AAAA, MX, PTR, QTYPE, RCODE, RR, TXT, A, DNSLabel
from dnslib.server import BaseResolver, DNSLogger, DNSServer

Records = dict[str, list[tuple[str, str]]]  # name -> [(type, value)], e.g. ("TXT", "v=spf1 -all")


class ZoneResolver(BaseResolver):  # type: ignore[misc]
    """Answers from `records`; a name with no records at all is NXDOMAIN. Tests may change the zone,
    or set `failing` to answer SERVFAIL to everything, as a broken resolver does."""

    def __init__(self, records: Records) -> None:
        self.records = records
        self.failing = False

    def resolve(self, request: Any, handler: Any) -> Any:
        reply = request.reply()
        if self.failing:
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        qname, qtype = str(request.q.qname).rstrip(".").lower(), QTYPE[request.q.qtype]
        found = self.records.get(qname)
        if found is None:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        for kind, value in found:
            if kind == qtype:
                reply.add_answer(RR(DNSLabel(qname), getattr(QTYPE, kind), ttl=60, rdata=_rdata(kind, value)))
        return reply


def _rdata(kind: str, value: str) -> Any:
    if kind == "TXT":
        # long values go out as several strings of at most 255 octets, as DNS hosts publish them
        return TXT([value[i:i + 255].encode() for i in range(0, len(value), 255)])
    if kind == "MX":
        return MX(value)
    return {"A": A, "AAAA": AAAA, "PTR": PTR}[kind](value)


def _bind_pair(resolver: ZoneResolver, logger: Any) -> tuple[Any, Any]:
    """A UDP server on a free port and a TCP server on the same number; another one when that TCP
    port is taken."""
    for _ in range(20):
        udp = DNSServer(resolver, port=0, address="127.0.0.1", logger=logger)
        try:
            tcp = DNSServer(resolver, port=udp.server.server_address[1], address="127.0.0.1", logger=logger,
                            tcp=True)
        except OSError:
            udp.server.server_close()
            continue
        return udp, tcp
    raise OSError("no loopback port free for both UDP and TCP")


@contextmanager
def dns_server(records: Records) -> Iterator[tuple[str, ZoneResolver]]:
    """Serve `records` over UDP and TCP on one loopback port; yields ("127.0.0.1:PORT", resolver)."""
    resolver = ZoneResolver(records)
    quiet = DNSLogger(log="-request,-reply,-truncated,-error,-recv,-send,-data", prefix=False)
    udp, tcp = _bind_pair(resolver, quiet)
    port = udp.server.server_address[1]
    udp.start_thread()
    tcp.start_thread()
    try:
        yield f"127.0.0.1:{port}", resolver
    finally:
        for server in (udp, tcp):
            server.server.shutdown()
            server.server.server_close()
