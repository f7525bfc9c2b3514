"""The whole doctor for `mailer doctor`, and its quick part that runs before every send."""

from __future__ import annotations

from mailer.audit import record_event
from mailer.config import Config
from mailer.db import Database
from mailer.doctor.config_checks import config_findings, web_finding
from mailer.doctor.dns_checks import check_dkim, check_spf, dns_findings, guarded, relay_addresses
from mailer.doctor.relay import relay_findings
from mailer.doctor.resolver import Lookup, Unanswerable
from mailer.doctor.results import Finding, Status
from mailer.errors import MailerError

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


class HopelessSendError(MailerError):
    """The quick doctor found that receivers would refuse or junk every message of the send."""

    def __init__(self, campaign_id: int, findings: list[Finding]) -> None:
        self.findings = findings
        named = "; ".join(f"{f.check}: {f.message}" for f in findings)
        super().__init__(f"campaign {campaign_id} not started, receivers would refuse it: {named}. "
                         "Fix it (see `mailer doctor`), or send anyway with --force (recorded in the audit trail)")


def preflight(config: Config, database: Database, campaign_id: int, force: bool, actor: str) -> list[Finding]:
    """The quick doctor before a send: raises HopelessSendError on a hopeless finding unless `force`,
    which is recorded in the audit trail. Returns the hopeless findings forced past."""
    blocking = hopeless(quick_doctor(config))
    if not blocking:
        return []
    if not force:
        raise HopelessSendError(campaign_id, blocking)
    with database.session() as session:
        record_event(session, "send_forced", actor, subject=f"campaign {campaign_id}",
                     reason="; ".join(f"{f.check}: {f.message}" for f in blocking)[:1000],
                     detail={"checks": [f.as_dict() for f in blocking]})
    return blocking
