"""Acting on mail that comes back: bounces, complaints and mailto unsubscribes change the database."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from mailer.config import Config
from mailer.db import address_hash, normalize_email
from mailer.inbound.classify import SMTP_CODE, Analysis, InboundKind, about_address
from mailer.models import (
    AuditEvent,
    BounceEvent,
    BounceKind,
    Delivery,
    DeliveryState,
    Subscriber,
    SuppressionReason,
    utcnow,
)
from mailer.policy_blocks import PolicyPauseRule, pause_for_policy_blocks, record_policy_block
from mailer.recipients.optout import OptOutSource, mask_email, unsubscribe
from mailer.recipients.subscribers import find_subscriber
from mailer.recipients.suppression import AuditNote, suppress
from mailer.tokens import UnsubscribeClaim

# the kinds that change the database (and delay warnings, read once like the bounces they
# may become); their messages are remembered so a rerun skips them
ACTED = frozenset({InboundKind.HARD_BOUNCE, InboundKind.SOFT_BOUNCE, InboundKind.POLICY_BLOCK,
                   InboundKind.DELAYED, InboundKind.COMPLAINT, InboundKind.UNSUBSCRIBE})

# delivery states in which the relay had the message, so a later bounce means it failed
_BOUNCEABLE_STATES = frozenset({DeliveryState.SENT, DeliveryState.DEFERRED, DeliveryState.SENDING,
                                DeliveryState.IN_DOUBT})


def act(session: Session, config: Config, analysis: Analysis) -> tuple[InboundKind, str]:
    """Do what the analysis of one message calls for, in the caller's transaction; the kind and a note."""
    if analysis.kind in (InboundKind.HARD_BOUNCE, InboundKind.SOFT_BOUNCE, InboundKind.POLICY_BLOCK):
        return _record_bounce(session, config, analysis)
    if analysis.kind is InboundKind.COMPLAINT:
        return _record_complaint(session, config, analysis)
    if analysis.kind is InboundKind.UNSUBSCRIBE:
        return _unsubscribe_by_mail(session, config, analysis)
    return analysis.kind, analysis.note


def _find_delivery(session: Session, analysis: Analysis) -> Delivery | None:
    for delivery_id in analysis.delivery_ids:
        delivery = session.get(Delivery, delivery_id)
        if delivery is not None:
            return delivery
    # no VERP address survived: the token in the returned original names campaign and subscriber
    for claim in analysis.claims:
        if claim.campaign_id is None:
            continue
        delivery = session.scalar(sa.select(Delivery).where(
            Delivery.campaign_id == claim.campaign_id, Delivery.subscriber_id == claim.subscriber_id))
        if delivery is not None:
            return delivery
    return None


def _record_bounce(session: Session, config: Config, analysis: Analysis) -> tuple[InboundKind, str]:
    delivery = _find_delivery(session, analysis)
    if delivery is None:
        return InboundKind.UNMATCHED, "a bounce that names none of our deliveries"
    found = _bounce_about(session, analysis, delivery)
    if found is None:
        # our signed return path vouches for the delivery, not for whom the report names: a
        # subscriber can forge a report for their own copy naming anyone
        named = ", ".join(dict.fromkeys(analysis.named_addresses[:3]))
        return InboundKind.UNMATCHED, (f"a bounce for delivery {delivery.id} naming {named}, not the address it "
                                       "was sent to; nothing done")
    analysis, email, who, counted_as = found
    if analysis.kind is InboundKind.OTHER:
        return InboundKind.OTHER, f"delivery {delivery.id}: {analysis.note}"
    digest = address_hash(counted_as)
    code = SMTP_CODE.search(analysis.diagnostic)
    status = analysis.status or (code.group(1) if code else "no status")
    if analysis.permanent and delivery.state in _BOUNCEABLE_STATES:
        # the one place a sent delivery becomes failed after the fact: the receiver said so later
        delivery.state = DeliveryState.FAILED
        delivery.last_code = int(code.group(1)) if code else delivery.last_code
        delivery.last_response = f"bounced: {status} {analysis.diagnostic}".strip()[:1000]
    if analysis.kind is InboundKind.POLICY_BLOCK:
        return _record_policy_block(session, config, analysis, delivery, digest, status, who)
    if analysis.kind is InboundKind.HARD_BOUNCE:
        _add_bounce_event(session, BounceKind.HARD, delivery, digest, analysis)
        if not email:
            return InboundKind.HARD_BOUNCE, f"delivery {delivery.id} failed ({status}); {who}"
        suppress(session, email, SuppressionReason.HARD_BOUNCE, f"bounce {status}",
                 _audit_note(f"hard bounce: {status} {analysis.diagnostic}", delivery))
        return InboundKind.HARD_BOUNCE, f"delivery {delivery.id} failed ({status}); {who} suppressed"
    if analysis.still_trying:
        # a delay warning is no bounce: the server still holds the message (Gmail sends them when
        # a big send arrives faster than it accepts), so counting it would suppress healthy inboxes;
        # if the server gives up, its `Action: failed` report is counted then
        return InboundKind.DELAYED, (f"delivery {delivery.id} delayed ({status}); {who}: the server "
                                     "is still trying, not counted")
    added = _add_bounce_event(session, BounceKind.SOFT, delivery, digest, analysis)
    campaigns = session.scalar(
        sa.select(sa.func.count(sa.distinct(BounceEvent.campaign_id)))
        .where(BounceEvent.address_hash == digest, BounceEvent.kind == BounceKind.SOFT)
    ) or 0
    limit = config.sending.soft_bounce_limit
    how = "failed, not for a missing mailbox" if analysis.permanent else "delayed or failed for now"
    note = f"delivery {delivery.id} {how} ({status}); {who}: {campaigns} of {limit}"
    if not added:
        note += " (this delivery was already counted)"
    if campaigns >= limit and email and suppress(
        session, email, SuppressionReason.SOFT_BOUNCES, f"{campaigns} campaigns soft-bounced",
        _audit_note(f"{campaigns} campaigns soft-bounced, the last {status}", delivery),
    ):
        note += "; suppressed"
    return InboundKind.SOFT_BOUNCE, note


def _bounce_about(
    session: Session, analysis: Analysis, delivery: Delivery
) -> tuple[Analysis, str, str, str] | None:
    """What the report says about the delivery's own address: the analysis for it, the address
    to suppress ("" for none), who it is for the note, and what its bounces are counted against.

    Counted against what we can verify: the subscriber's address, or their corrected old one,
    or for an erased subscriber the delivery alone; never an address a report merely names.
    None when the report is about someone else."""
    subscriber = session.get(Subscriber, delivery.subscriber_id) if delivery.subscriber_id else None
    if subscriber is None:
        # no address is left to check the report against; the delivery is ours all the same
        return analysis, "", "an erased subscriber", f"delivery:{delivery.id}"
    own = about_address(analysis, [subscriber.email])
    if own is not None:
        return own, subscriber.email, subscriber.email, subscriber.email
    for earlier in _earlier_addresses(session, subscriber, delivery, analysis.named_addresses):
        own = about_address(analysis, [earlier])
        if own is not None:
            # the report is about a mailbox the person no longer has (the address was corrected
            # since): the delivery failed, but the dead mailbox must not follow them to the new one
            return own, "", f"{earlier} (no longer the subscriber's address)", earlier
    return None


def _earlier_addresses(session: Session, subscriber: Subscriber, delivery: Delivery,
                       named: list[str]) -> list[str]:
    """Those of the named addresses the subscriber had when the delivery was made and corrected since."""
    corrections = session.scalars(sa.select(AuditEvent).where(
        AuditEvent.action == "rectify", sa.func.lower(AuditEvent.subject) == subscriber.email_normalized,
        AuditEvent.at >= delivery.created_at))
    replaced = {e.detail.get("previous_address_hash") for e in corrections}
    return [address for address in dict.fromkeys(normalize_email(a) for a in named)
            if address_hash(address) in replaced]


def _record_policy_block(session: Session, config: Config, analysis: Analysis, delivery: Delivery,
                         digest: str, status: str, who: str) -> tuple[InboundKind, str]:
    # the receiver distrusts the sender (blocklist, DMARC...), not the address: nobody is suppressed
    added = record_policy_block(session, delivery.id, delivery.campaign_id, digest, analysis.status,
                                analysis.diagnostic, utcnow())
    note = f"delivery {delivery.id} refused by policy ({status}); {who} not suppressed"
    if not added:
        note += " (this delivery was already counted)"
    paused = pause_for_policy_blocks(session, delivery.campaign_id, PolicyPauseRule.from_config(config.sending))
    if paused:
        note += f"; campaign {delivery.campaign_id} paused"
    return InboundKind.POLICY_BLOCK, note


def _audit_note(reason: str, delivery: Delivery | None) -> AuditNote:
    return AuditNote("inbound", reason.strip(), detail={
        "delivery_id": delivery.id if delivery else None,
        "campaign_id": delivery.campaign_id if delivery else None,
    })


def _add_bounce_event(
    session: Session, kind: BounceKind, delivery: Delivery | None, digest: str, analysis: Analysis
) -> bool:
    """Record one event per (delivery, kind); False when it was there already."""
    if delivery is not None and session.scalar(
        sa.select(BounceEvent.id).where(BounceEvent.delivery_id == delivery.id, BounceEvent.kind == kind)
    ):
        return False
    session.add(BounceEvent(
        kind=kind,
        delivery_id=delivery.id if delivery else None,
        campaign_id=delivery.campaign_id if delivery else None,
        address_hash=digest,
        status=analysis.status[:20],
        diagnostic=analysis.diagnostic[:1000],
    ))
    session.flush()
    return True


def _record_complaint(session: Session, config: Config, analysis: Analysis) -> tuple[InboundKind, str]:
    delivery = _find_delivery(session, analysis)
    found = _complainant(session, analysis, delivery)
    # our marks name someone since erased: a true report about nobody we still have
    marked = delivery is not None or bool(analysis.claims)
    if found is None and not marked and not analysis.from_feedback_loop:
        # COMPLIANCE 28: anyone can write a report naming anyone; without our own signed mark
        # or a feedback loop the operator vouches for, it is only listed
        named = ", ".join(dict.fromkeys(analysis.named_addresses[:3])) or "nobody"
        return InboundKind.UNVERIFIED_COMPLAINT, (
            f"from {analysis.from_address or '(no From)'} naming {named}: no token or return path of "
            "ours, not from a configured feedback-loop sender; nothing changed")
    if found is None and analysis.from_feedback_loop:
        found = _named_complainant(session, analysis)
    if found is None:
        return InboundKind.UNMATCHED, "a spam complaint about nobody we mailed"
    subscriber, how = found
    source = f"complaint ({analysis.user_agent or analysis.from_address or 'ARF'})"[:100]
    created = suppress(session, subscriber.email, SuppressionReason.COMPLAINT, source,
                       _audit_note(f"spam complaint: {source}, identified by {how}", delivery))
    _add_bounce_event(session, BounceKind.COMPLAINT, delivery, address_hash(subscriber.email), analysis)
    # a spam report is the strongest opt-out there is: every list, whatever unsubscribe.scope says
    unsubscribe(session, config, UnsubscribeClaim(subscriber.id, None, delivery.campaign_id if delivery else None),
                "complaint", actor="inbound")
    return InboundKind.COMPLAINT, (f"{subscriber.email} suppressed" + ("" if created else " (already)")
                                   + f", identified by {how}")


def _complainant(
    session: Session, analysis: Analysis, delivery: Delivery | None
) -> tuple[Subscriber, str] | None:
    """The subscriber our own signed token or VERP address in the report names, and which."""
    for claim in analysis.claims:
        subscriber = session.get(Subscriber, claim.subscriber_id)
        if subscriber is not None:
            return subscriber, "our unsubscribe token"
    if delivery is not None and delivery.subscriber_id is not None:
        subscriber = session.get(Subscriber, delivery.subscriber_id)
        if subscriber is not None:
            return subscriber, "our return path"
    return None


def _named_complainant(session: Session, analysis: Analysis) -> tuple[Subscriber, str] | None:
    # only for a feedback loop the operator trusts, and last, since providers often redact it
    for address in analysis.named_addresses:
        subscriber = find_subscriber(session, address)
        if subscriber is not None:
            return subscriber, f"the address {analysis.from_address} named"
    return None


def _unsubscribe_by_mail(session: Session, config: Config, analysis: Analysis) -> tuple[InboundKind, str]:
    claim = next((c for c in analysis.claims if session.get(Subscriber, c.subscriber_id)), None)
    how = "token"
    if claim is None and analysis.from_address:
        # no usable token: the sender asks for their own address, as the 400 page tells them to
        sender = find_subscriber(session, analysis.from_address)
        if sender is not None:
            claim, how = UnsubscribeClaim(sender.id, None, None), "sender address"
    if claim is None:
        return InboundKind.UNMATCHED, "an unsubscribe request for nobody we know"
    result = unsubscribe(session, config, claim, OptOutSource.MAILTO)
    target = result.masked_email or mask_email(analysis.from_address)
    if not result.changed:
        return InboundKind.UNSUBSCRIBE, f"{target} was already unsubscribed (by {how})"
    scope = f"the list {result.list_title}" if result.list_title else "everything"
    return InboundKind.UNSUBSCRIBE, f"{target} unsubscribed from {scope} (by {how})"
