"""SPF (RFC 7208) evaluated as a receiver would: ip4, ip6, a, mx, include, redirect, exists, all.

Every mechanism that asks DNS counts toward the limit of 10, as receivers count them; `ptr`
counts too but never matches (RFC 7208 discourages it and most receivers skip it).
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

from mailer.doctor.resolver import Lookup

LOOKUP_LIMIT = 10
_QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}


class SpfResult(enum.StrEnum):
    """RFC 7208 section 2.6 results."""

    PASS = "pass"
    FAIL = "fail"
    SOFTFAIL = "softfail"
    NEUTRAL = "neutral"
    NONE = "none"
    PERMERROR = "permerror"


class _PermError(Exception):
    """The record is broken for every receiver (a syntax error, too many look-ups, no record to include)."""


@dataclass
class Evaluation:
    result: SpfResult
    lookups: int  # DNS-querying mechanisms used
    reason: str = ""  # why a permerror


def spf_records(lookup: Lookup, domain: str) -> list[str]:
    """The TXT records at `domain` that are SPF records (`v=spf1`, alone or followed by a space)."""
    return [txt for txt in lookup.txt(domain)
            if txt.lower() == "v=spf1" or txt.lower().startswith("v=spf1 ")]


def evaluate(lookup: Lookup, domain: str, ip: str) -> Evaluation:
    """check_host(ip, domain); raises Unanswerable when DNS does not answer."""
    counter = [0]
    try:
        result = _check_host(lookup, domain, ipaddress.ip_address(ip), counter)
    except _PermError as exc:
        return Evaluation(SpfResult.PERMERROR, counter[0], str(exc))
    return Evaluation(result, counter[0])


def _count(counter: list[int]) -> None:
    counter[0] += 1
    if counter[0] > LOOKUP_LIMIT:
        raise _PermError(f"more than {LOOKUP_LIMIT} DNS look-ups")


def _check_host(lookup: Lookup, domain: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
                counter: list[int]) -> SpfResult:
    records = spf_records(lookup, domain)
    if not records:
        return SpfResult.NONE
    if len(records) > 1:
        raise _PermError(f"{domain} has {len(records)} SPF records")
    redirect = ""
    for term in records[0].split()[1:]:
        name, sep, value = term.partition("=")
        if sep and ":" not in name and "/" not in name:
            if name.lower() == "redirect":
                redirect = value
            continue  # exp= and unknown modifiers change nothing here
        qualifier = _QUALIFIERS.get(term[0], "")
        mechanism = term[1:] if qualifier else term
        if _matches(lookup, domain, mechanism, ip, counter):
            return SpfResult(qualifier or "pass")
    if redirect:
        _count(counter)
        target = _expand(redirect, domain, ip)
        result = _check_host(lookup, target, ip, counter)
        if result is SpfResult.NONE:
            raise _PermError(f"redirect to {target}, which has no SPF record")
        return result
    return SpfResult.NEUTRAL


def _matches(lookup: Lookup, domain: str, mechanism: str,
             ip: ipaddress.IPv4Address | ipaddress.IPv6Address, counter: list[int]) -> bool:
    kind, _, arg = mechanism.partition(":")
    # "a/24" and "mx/24//64" carry a prefix without a domain; "a:host/24" carries both
    kind, slash, cidr = kind.partition("/")
    if not slash:
        arg, _, cidr = arg.partition("/")
    kind = kind.lower()
    target = _expand(arg, domain, ip) if arg else domain
    if kind == "all":
        return True
    if kind in ("ip4", "ip6"):
        return _in_network(ip, arg + ("/" + cidr if cidr else ""))
    if kind == "include":
        _count(counter)
        result = _check_host(lookup, target, ip, counter)
        if result is SpfResult.NONE:
            raise _PermError(f"include:{target}, which has no SPF record")
        return result is SpfResult.PASS
    if kind in ("a", "mx", "exists", "ptr"):
        _count(counter)
        return _host_matches(lookup, kind, target, ip, cidr, counter)
    raise _PermError(f"unknown mechanism {mechanism!r}")


def _host_matches(lookup: Lookup, kind: str, target: str,
                  ip: ipaddress.IPv4Address | ipaddress.IPv6Address, cidr: str, counter: list[int]) -> bool:
    if kind == "ptr":
        return False
    if kind == "exists":
        return bool(lookup.addresses(target))
    hosts = [target]
    if kind == "mx":
        hosts = lookup.mx(target)
        if len(hosts) > LOOKUP_LIMIT:
            raise _PermError(f"{target} has more than {LOOKUP_LIMIT} MX hosts")
    v4, _, v6 = cidr.partition("//")
    prefix = v4 if ip.version == 4 else v6
    for host in hosts:
        for address in lookup.addresses(host):
            if _in_network(ip, address + ("/" + prefix if prefix else "")):
                return True
    return False


def _in_network(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, network: str) -> bool:
    try:
        return ip in ipaddress.ip_network(network, strict=False)
    except ValueError:
        raise _PermError(f"{network!r} is not an address or network") from None


def _expand(spec: str, domain: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """The macros a sending domain's record may use about itself and the client address."""
    if "%" not in spec:
        return spec
    out = spec.replace("%%", "%").replace("%_", " ").replace("%-", "%20")
    for macro, value in (("%{d}", domain), ("%{o}", domain), ("%{i}", str(ip)), ("%{v}", "in-addr" if ip.version == 4 else "ip6")):
        out = out.replace(macro, value)
    if "%{" in out:
        raise _PermError(f"macro in {spec!r} needs the sender's address, unknown before sending")
    return out
