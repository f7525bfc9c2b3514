"""How a send and a campaign's state read on a terminal, shared by `campaign`, `notice` and `send-due`."""

from __future__ import annotations

from mailer.campaign_report import COMPLAINT_RATE_LIMIT, CampaignStatusReport, Returns
from mailer.cli.terminal import terminal_safe
from mailer.delivery.pipeline import SendReport
from mailer.models import DeliveryState


def describe_send(report: SendReport) -> str:
    why = [f"{report.hard_bounces} hard bounces suppressed"] if report.hard_bounces else []
    why += [f"{report.policy_blocks} refused by policy, not suppressed"] if report.policy_blocks else []
    hard = f" ({'; '.join(why)})" if why else ""
    line = (f"campaign {report.campaign_id}: {report.sent} sent, {report.deferred} deferred, "
            f"{report.failed} failed{hard}, {report.suppressed} suppressed")
    if report.interrupted:
        line += "; stopped early, the rest stays queued"
    if report.campaign_stopped:
        line += "; the campaign was paused or cancelled meanwhile"
    return line


def describe_returns(returns: Returns) -> str:
    """What came back, and the complaint rate against the mailbox providers' line."""
    line = (f"came back: {returns.hard_bounces} hard bounces, {returns.soft_bounces} soft bounces, "
            f"{returns.policy_blocks} policy blocks, {returns.complaints} complaints, "
            f"{returns.unsubscribes} unsubscribes")
    if returns.complaint_rate is not None:
        line += f"; complaint rate {returns.complaint_rate:.2%}"
    if returns.complaint_rate_too_high:
        line += (f"\nwarning: complaints are over {COMPLAINT_RATE_LIMIT:.1%} of delivered mail, Gmail's and "
                 "Yahoo's limit for bulk senders; their mail may go to spam or be refused")
    return line


def describe_status(status: CampaignStatusReport) -> str:
    counts = ", ".join(f"{n} {state.value}" for state, n in status.counts.items() if n) or "no deliveries"
    line = f"status: {status.status.value} ({counts})"
    if status.policy_blocks:
        line += (f"\npolicy blocks: {status.policy_blocks} (refused for the sender's reputation or "
                 "authentication, not the address; nobody suppressed)")
    if status.counts[DeliveryState.SENT] or status.counts[DeliveryState.FAILED]:
        line += "\n" + describe_returns(status.returns)
    if status.reason:
        line += f"\nreason: {terminal_safe(status.reason)}"
    if status.scheduled_at and status.status.value == "scheduled":
        line += f"\nscheduled for {status.scheduled_at.isoformat()}"
    if status.counts[DeliveryState.DEFERRED] and status.next_retry_at:
        line += f"\nnext retry of deferred messages at {status.next_retry_at.isoformat()} (by send-due)"
    if status.counts[DeliveryState.IN_DOUBT]:
        line += (f"\n{status.counts[DeliveryState.IN_DOUBT]} in doubt: they may have been delivered; "
                 f"`mailer campaign retry {status.id} --in-doubt` sends them again")
    return line
