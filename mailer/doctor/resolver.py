"""DNS look-ups for the doctor: the system's resolver or `[doctor] nameserver`, with a time limit."""

from __future__ import annotations

from typing import Any

import dns.exception
import dns.name
import dns.resolver
import dns.reversename

from mailer.config import DoctorConfig
from mailer.errors import MailerError


class Unanswerable(MailerError):
    """The question got no answer (no resolver, a time-out, a server failure): not a "no"."""


class Lookup:
    """TXT, address and MX look-ups; an empty list means the name or the record does not exist."""

    def __init__(self, doctor: DoctorConfig, timeout: float = 5.0) -> None:
        self._resolver: dns.resolver.Resolver | None = None
        self._why_none = ""
        if doctor.dns_off:
            self._why_none = 'DNS checks are off ([doctor] nameserver = "off")'
            return
        server = doctor.nameserver_address()
        try:
            resolver = dns.resolver.Resolver(configure=server is None)
        except dns.resolver.NoResolverConfiguration:
            self._why_none = "this machine has no DNS resolver configured"
            return
        if server is not None:
            resolver.nameservers = [server[0]]
            resolver.port = server[1]
        resolver.timeout = resolver.lifetime = timeout
        self._resolver = resolver

    def txt(self, name: str) -> list[str]:
        """Each TXT record at `name`, its strings joined."""
        return [b"".join(rdata.strings).decode("utf-8", "replace") for rdata in self._ask(name, "TXT")]

    def addresses(self, name: str) -> list[str]:
        """The IPv4 and IPv6 addresses of `name`."""
        return [rdata.address for kind in ("A", "AAAA") for rdata in self._ask(name, kind)]

    def mx(self, name: str) -> list[str]:
        """The mail exchangers of `name`, most preferred first."""
        answers = sorted(self._ask(name, "MX"), key=lambda rdata: rdata.preference)
        return [rdata.exchange.to_text(omit_final_dot=True) for rdata in answers]

    def ptr(self, ip: str) -> list[str]:
        """The names the reverse zone gives for `ip`."""
        name = dns.reversename.from_address(ip).to_text()
        return [rdata.target.to_text(omit_final_dot=True) for rdata in self._ask(name, "PTR")]

    def _ask(self, name: str, kind: str) -> list[Any]:
        if self._resolver is None:
            raise Unanswerable(self._why_none)
        try:
            return list(self._resolver.resolve(name, kind, search=False))
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.Timeout:
            # a resolver that let one question time out is not asked again: each check would
            # wait out the time limit in turn, and a send would wait for all of them
            self._why_none = f"DNS gave no answer in time (for {name} {kind})"
            self._resolver = None
            raise Unanswerable(self._why_none) from None
        except (dns.resolver.NoNameservers, dns.name.NameTooLong, dns.name.LabelTooLong,
                dns.name.EmptyLabel) as exc:
            raise Unanswerable(f"no answer for {name} {kind}: {exc}") from None
