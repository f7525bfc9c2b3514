"""What receivers look up before they trust a message: SPF, DKIM, DMARC, MX and the unsubscribe host."""

from __future__ import annotations

import base64
import binascii
import functools
import ipaddress
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from publicsuffixlist import PublicSuffixList

from mailer.config import Config
from mailer.content.dkim import load_private_key
from mailer.doctor.resolver import Lookup, Unanswerable
from mailer.doctor.results import Finding, Status
from mailer.doctor.spf import LOOKUP_LIMIT, SpfResult, evaluate, spf_records
from mailer.errors import ConfigError

GOOD_KEY_BITS = 2048


def relay_addresses(config: Config, lookup: Lookup) -> list[str]:
    """The public addresses the relay sends from: `[doctor] sending_ips`, else smtp.host's own."""
    if config.doctor.sending_ips:
        return [ip.strip() for ip in config.doctor.sending_ips]
    try:
        found = [str(ipaddress.ip_address(config.smtp.host))]
    except ValueError:
        found = lookup.addresses(config.smtp.host)
    # a relay on loopback or a private network sends from an address not seen here
    return [ip for ip in found if ipaddress.ip_address(ip).is_global]


def check_spf(config: Config, lookup: Lookup, label: str, domain: str) -> Finding:
    """One SPF record at `domain` that passes the relay's addresses within the look-up limit."""
    records = spf_records(lookup, domain)
    if not records:
        return Finding(label, Status.FAIL, f"{domain} has no SPF record; publish a TXT record such as "
                       f'"v=spf1 ip4:<relay address> -all" (or your provider\'s include:)')
    if len(records) > 1:
        return Finding(label, Status.FAIL, f"{domain} has {len(records)} SPF records, and receivers treat that "
                       "as an error; merge them into one TXT record")
    ips = relay_addresses(config, lookup)
    if not ips:
        return Finding(label, Status.UNKNOWN, f"{domain} has one SPF record; set [doctor] sending_ips to the "
                       "relay's public addresses to check that it covers them")
    return _spf_covers(lookup, label, domain, ips)


def _spf_covers(lookup: Lookup, label: str, domain: str, ips: list[str]) -> Finding:
    most = 0
    for ip in ips:
        result = evaluate(lookup, domain, ip)
        if result.result is SpfResult.PERMERROR:
            return Finding(label, Status.FAIL, f"the SPF record of {domain} is broken ({result.reason}); "
                           f"receivers treat it as missing. Keep it within {LOOKUP_LIMIT} look-ups and valid")
        if result.result is not SpfResult.PASS:
            return Finding(label, Status.FAIL, f"the SPF record of {domain} gives {result.result.value} for the "
                           f"relay's address {ip}; add ip4:/ip6:{ip} or the relay provider's include: to it",
                           hopeless=result.result is SpfResult.FAIL)
        most = max(most, result.lookups)
    return Finding(label, Status.PASS, f"{domain}: one SPF record, passes {', '.join(ips)} "
                   f"({most} of {LOOKUP_LIMIT} look-ups)")


def published_key(lookup: Lookup, name: str) -> rsa.RSAPublicKey | None:
    """The RSA key in the DKIM record at `name`; None when there is none or it does not parse."""
    for txt in lookup.txt(name):
        tags = dict(_tag(part) for part in txt.split(";") if "=" in part)
        data = "".join(tags.get("p", "").split())
        if not data:
            continue
        try:
            der = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            continue
        key = _load_public(der)
        if key is not None:
            return key
    return None


def _tag(part: str) -> tuple[str, str]:
    name, _, value = part.partition("=")
    return name.strip().lower(), value.strip()


def _load_public(der: bytes) -> rsa.RSAPublicKey | None:
    for load in (serialization.load_der_public_key, _load_pkcs1):
        try:
            key = load(der)
        except (ValueError, TypeError):
            continue
        if isinstance(key, rsa.RSAPublicKey):
            return key
    return None


def _load_pkcs1(der: bytes) -> object:
    # some DNS hosts publish the bare PKCS#1 key rather than SubjectPublicKeyInfo
    pem = b"-----BEGIN RSA PUBLIC KEY-----\n" + base64.encodebytes(der) + b"-----END RSA PUBLIC KEY-----\n"
    return serialization.load_pem_public_key(pem)


def check_dkim(config: Config, lookup: Lookup) -> Finding:
    """The record at selector._domainkey.domain publishes the public half of dkim.private_key."""
    dkim = config.dkim
    if not dkim.enabled:
        return Finding("dkim", Status.FAIL, "DKIM is not set up; Gmail and Yahoo require it of bulk senders. "
                       "Run `mailer dkim keygen --selector S`, publish the record, set [dkim]")
    try:
        key = load_private_key(dkim.private_key, config.source)
    except ConfigError as exc:
        return Finding("dkim", Status.FAIL, f"{exc}")
    name = f"{dkim.selector}._domainkey.{dkim.domain.lower()}"
    published = published_key(lookup, name)
    if published is None:
        return Finding("dkim", Status.FAIL, f"no DKIM key published at {name}; publish the record "
                       "`mailer dkim keygen` printed for this key")
    if published.public_numbers().n != key.public_key().public_numbers().n:
        return Finding("dkim", Status.FAIL, f"the key published at {name} is not the public half of "
                       "dkim.private_key; publish this key's record or point private_key at the matching key",
                       hopeless=True)
    if key.key_size < GOOD_KEY_BITS:
        return Finding("dkim", Status.WARN, f"{name} matches, but the key has {key.key_size} bits; "
                       f"make a {GOOD_KEY_BITS}-bit key with `mailer dkim keygen` and a new selector")
    return Finding("dkim", Status.PASS, f"{name} publishes the public half of dkim.private_key "
                   f"({key.key_size} bits)")


def _dmarc_record(lookup: Lookup, domain: str) -> tuple[str, dict[str, str]] | None:
    # receivers fall back to the organizational domain (RFC 7489 6.6.3)
    candidates = [domain, _organizational(domain)]
    for name in dict.fromkeys(candidates):
        for txt in lookup.txt(f"_dmarc.{name}"):
            if txt.replace(" ", "").lower().startswith("v=dmarc1"):
                return name, dict(_tag(part) for part in txt.split(";") if "=" in part)
    return None


def _aligned(domain: str, other: str, strict: bool) -> bool:
    if strict:
        return domain == other
    return _organizational(domain) == _organizational(other)


def _organizational(domain: str) -> str:
    # RFC 7489 3.2: the public suffix and one label more (harmonymails.co.uk, not co.uk)
    name = domain.lower().rstrip(".")
    return _public_suffixes().privatesuffix(name) or name


@functools.cache
def _public_suffixes() -> PublicSuffixList:
    return PublicSuffixList()  # the list shipped with the package: no network


def check_dmarc(config: Config, lookup: Lookup) -> Finding:
    """A DMARC record with a policy, and From aligned with the DKIM d= or the return path's domain."""
    domain = config.sender.from_domain
    found = _dmarc_record(lookup, domain)
    if found is None:
        return Finding("dmarc", Status.FAIL, f"no DMARC record at _dmarc.{domain}; publish a TXT record such as "
                       f'"v=DMARC1; p=none; rua=mailto:dmarc@{domain}" and tighten p= later')
    name, tags = found
    policy = tags.get("p", "").lower()
    if policy not in ("none", "quarantine", "reject"):
        return Finding("dmarc", Status.FAIL, f"the DMARC record of {name} has no valid p= policy; "
                       "add p=none, p=quarantine or p=reject")
    aligned = _aligned_with(config, domain, tags)
    if not aligned:
        return Finding("dmarc", Status.FAIL, f"From ({domain}) is aligned with neither the DKIM domain nor the "
                       "return path's domain; sign with d= on the From domain or move bounce_domain under it")
    if policy == "none":
        return Finding("dmarc", Status.WARN, f"_dmarc.{name} has p=none, so spoofed mail is not stopped; "
                       f"once reports look clean set p=quarantine (From aligned via {aligned})")
    return Finding("dmarc", Status.PASS, f"_dmarc.{name} has p={policy}; From aligned via {aligned}")


def _aligned_with(config: Config, domain: str, tags: dict[str, str]) -> str:
    via: list[str] = []
    if config.dkim.enabled and _aligned(domain, config.dkim.domain.lower(), tags.get("adkim", "r").lower() == "s"):
        via.append("DKIM")
    if _aligned(domain, config.sender.bounce_domain.lower(), tags.get("aspf", "r").lower() == "s"):
        via.append("SPF")
    return " and ".join(via)


def check_mx(config: Config, lookup: Lookup) -> Finding:
    """Bounces come back only when the bounce domain has a mail exchanger."""
    domain = config.sender.bounce_domain.lower()
    hosts = lookup.mx(domain)
    if not hosts:
        return Finding("mx bounces", Status.FAIL, f"{domain} has no MX record, so bounces never come back; "
                       "point an MX at the host whose MTA pipes to `mailer inbound process`")
    return Finding("mx bounces", Status.PASS, f"{domain} receives mail at {', '.join(hosts)}")


def check_unsubscribe_host(config: Config, lookup: Lookup) -> Finding:
    """The one-click unsubscribe link must be https on a host that resolves."""
    url = urlsplit(config.unsubscribe.base_url)
    host = url.hostname or ""
    if url.scheme != "https":
        return Finding("unsubscribe", Status.FAIL, f"unsubscribe.base_url is {url.scheme}://; Gmail and Yahoo "
                       "need one-click unsubscribe over https: put TLS in front of `mailer serve`")
    if not lookup.addresses(host):
        return Finding("unsubscribe", Status.FAIL, f"{host} (unsubscribe.base_url) does not resolve; "
                       "add its A/AAAA record")
    return Finding("unsubscribe", Status.PASS, f"{config.unsubscribe.base_url} is https and {host} resolves")


def check_reverse_dns(config: Config, lookup: Lookup) -> Finding:
    """Each relay address has a PTR name that resolves back to it (forward-confirmed reverse DNS)."""
    ips = relay_addresses(config, lookup)
    if not ips:
        return Finding("reverse dns", Status.UNKNOWN, "the relay's public address is not known; set "
                       "[doctor] sending_ips to check its reverse DNS")
    for ip in ips:
        names = lookup.ptr(ip)
        if not names:
            return Finding("reverse dns", Status.FAIL, f"{ip} has no PTR record; ask whoever owns the address "
                           "(the hosting provider) to set one to the relay's name")
        if not any(ip in lookup.addresses(name) for name in names[:3]):
            return Finding("reverse dns", Status.FAIL, f"{ip} is named {names[0]}, which does not resolve back "
                           f"to {ip}; add an A/AAAA record for {names[0]}")
    return Finding("reverse dns", Status.PASS, f"{', '.join(ips)}: PTR names resolve back to the relay's addresses")


def guarded(label: str, check: Callable[..., Finding], *args: object) -> Finding:
    """Run one check; a question DNS did not answer makes it UNKNOWN, never a failure."""
    try:
        return check(*args)
    except Unanswerable as exc:
        return Finding(label, Status.UNKNOWN, f"{exc}; cannot tell")


def dns_findings(config: Config, lookup: Lookup) -> Iterable[Finding]:
    bounce = config.sender.bounce_domain.lower()
    yield guarded("spf from", check_spf, config, lookup, "spf from", config.sender.from_domain)
    yield guarded("spf bounces", check_spf, config, lookup, "spf bounces", bounce)
    yield guarded("dkim", check_dkim, config, lookup)
    yield guarded("dmarc", check_dmarc, config, lookup)
    yield guarded("mx bounces", check_mx, config, lookup)
    yield guarded("unsubscribe", check_unsubscribe_host, config, lookup)
    yield guarded("reverse dns", check_reverse_dns, config, lookup)
