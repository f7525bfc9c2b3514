"""The whole doctor for `mailer doctor`, and its quick part that runs before every send."""

from __future__ import annotations

from mailer.config import Config
from mailer.doctor.config_checks import config_findings, web_finding
from mailer.doctor.dns_checks import check_dkim, check_spf, dns_findings, guarded, relay_addresses
from mailer.doctor.relay import relay_findings
from mailer.doctor.resolver import Lookup, Unanswerable
from mailer.doctor.results import Finding, Status

# a send waits at most this long per DNS question before it calls the answer unknown
QUICK_TIMEOUT = 1.5


def run_doctor(config: Config, web: bool = False) -> list[Finding]:
    """Every check, in the order a person would fix them."""
    lookup = Lookup(config.doctor)
    findings = [*dns_findings(config, lookup), *relay_findings(config), *config_findings(config)]
    if web:
        findings.append(web_finding(config))
    return findings


def quick_doctor(config: Config) -> list[Finding]:
    """The checks whose failure makes every message of a send fail: the DKIM key against its record,
    and SPF against the relay's known addresses. Unanswered questions come back UNKNOWN."""
    findings: list[Finding] = []
    lookup = Lookup(config.doctor, timeout=QUICK_TIMEOUT)
    if config.dkim.enabled:
        findings.append(guarded("dkim", check_dkim, config, lookup))
    try:
        known = bool(relay_addresses(config, lookup))
    except Unanswerable:
        known = False
    if known:
        bounce = config.sender.bounce_domain.lower()
        findings.append(guarded("spf bounces", check_spf, config, lookup, "spf bounces", bounce))
    return findings


def hopeless(findings: list[Finding]) -> list[Finding]:
    return [finding for finding in findings if finding.hopeless and finding.status is Status.FAIL]
