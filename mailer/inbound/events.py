"""Provider webhook events (SES, SendGrid, Postmark, Mailgun) acted on as `inbound process` acts on mail."""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import re
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from mailer.bounce_class import BounceClass, classify, enhanced_status, reply_code
from mailer.config import Config
from mailer.db import normalize_email
from mailer.inbound.act import ACTED, act
from mailer.inbound.classify import KIND_OF_CLASS, Analysis, InboundKind
from mailer.models import Campaign, Delivery, InboundMessage, Subscriber, WebhookToken, utcnow
from mailer.recipients.optout import unsubscribe
from mailer.tokens import UnsubscribeClaim
from mailer.verp import parse_delivery_reference

# <campaign-3.subscriber-7@domain>: the Message-ID every campaign message carries (content.compose)
_MESSAGE_ID = re.compile(r"<?(?:campaign|notice)-(\d{1,18})\.subscriber-(\d{1,18})@([^>\s]{1,255})>?")
# how long a one-time token is remembered: longer than the window in which its timestamp is believed
_TOKEN_MEMORY = dt.timedelta(hours=1)


class EventKind(enum.StrEnum):
    """What a provider reported about one recipient of one message."""

    BOUNCE = "bounce"  # the message was refused or returned; the verdict and status say how
    COMPLAINT = "complaint"  # the recipient reported it as spam (a feedback loop the provider runs)
    UNSUBSCRIBE = "unsubscribe"  # the recipient opted out through the provider's own link
    IGNORED = "ignored"  # delivered, opened, deferred...: nothing for the mailer to do


class Verdict(enum.StrEnum):
    """The provider's own word on a bounce, believed only where the SMTP status says nothing."""

    GONE = "gone"  # a permanent failure the provider calls a hard bounce (bad address)
    TRANSIENT = "transient"  # a temporary failure the provider stopped retrying
    POLICY = "policy"  # refused for the sender (blocked, DMARC): the address is kept
    UNKNOWN = "unknown"  # the provider does not say


@dataclass(frozen=True)
class ProviderEvent:
    """One event for one recipient, as a provider's webhook reported it."""

    provider: str  # "ses", "sendgrid", "postmark", "mailgun"
    event_id: str  # the provider's id of the event, the same when it is posted again
    kind: EventKind
    recipient: str = ""
    reference: str = ""  # our delivery reference, from the provider header we added
    message_id: str = ""  # our Message-ID, as the provider echoed it
    verdict: Verdict = Verdict.UNKNOWN
    status: str = ""  # enhanced status code, when the provider gives one
    diagnostic: str = ""  # the receiving server's reply or the provider's reason
    note: str = ""  # for an ignored event: what it was
    still_trying: bool = False  # a temporary failure the provider will retry: nothing is counted yet

    @property
    def fingerprint(self) -> str:
        """What makes the same event posted twice recognisable (a retry, a replay)."""
        return hashlib.sha256(f"webhook:{self.provider}:{self.event_id}".encode("utf-8", "replace")).hexdigest()


@dataclass(frozen=True)
class EventOutcome:
    """What became of one event."""

    kind: InboundKind
    note: str


def act_on_event(session: Session, config: Config, event: ProviderEvent) -> EventOutcome:
    """Act on one event in the caller's transaction, exactly as on the same report by mail.

    An event acted on before (the same provider id) changes nothing; the same bounce or
    complaint that arrived by DSN or another source adds nothing either, since bounces are
    counted once per delivery and a suppression is kept once per address. Two transactions
    acting on the same event at once: the second fails with IntegrityError and rolls back.
    """
    if event.kind is EventKind.IGNORED:
        return EventOutcome(InboundKind.OTHER, event.note or "nothing to do")
    if session.scalar(sa.select(InboundMessage.id).where(InboundMessage.fingerprint == event.fingerprint)):
        return EventOutcome(InboundKind.ALREADY_PROCESSED, "acted on before; nothing done")
    delivery_id = find_delivery_id(session, config, event)
    if event.kind is EventKind.UNSUBSCRIBE:
        kind, note = _unsubscribe(session, config, event, delivery_id)
    else:
        kind, note = act(session, config, _analysis(event, delivery_id))
    if kind in ACTED:
        session.add(InboundMessage(fingerprint=event.fingerprint, kind=kind.value))
        session.flush()
    return EventOutcome(kind, note)


def find_delivery_id(session: Session, config: Config, event: ProviderEvent) -> int | None:
    """The delivery the event is about: our signed reference first, then our Message-ID."""
    if event.reference:
        delivery_id = parse_delivery_reference(config, event.reference)
        if delivery_id is not None:
            return delivery_id
    match = _MESSAGE_ID.fullmatch(event.message_id.strip())
    if match is None or match.group(3).lower() != config.sender.sending_domain:
        return None
    return session.scalar(sa.select(Delivery.id).where(
        Delivery.campaign_id == int(match.group(1)), Delivery.subscriber_id == int(match.group(2))))


def _analysis(event: ProviderEvent, delivery_id: int | None) -> Analysis:
    named = [event.recipient] if event.recipient else []
    ids = [delivery_id] if delivery_id is not None else []
    if event.kind is EventKind.COMPLAINT:
        # the provider's signed webhook vouches for the report as a configured feedback loop does
        return Analysis(InboundKind.COMPLAINT, delivery_ids=ids, named_addresses=named,
                        from_address=_PROVIDER_NAMES[event.provider], user_agent=_PROVIDER_NAMES[event.provider],
                        from_feedback_loop=True)
    found, status = bounce_class(event)
    # the audit trail and the bounce record tell which webhook said so; the provider's verdict
    # stands in for the server's words it did not pass on
    diagnostic = f"{_PROVIDER_NAMES[event.provider]} webhook: {event.diagnostic or event.verdict.value + ' bounce'}"
    return Analysis(KIND_OF_CLASS[found], note=f"the provider reported it delivered ({status or 'no status'})",
                    status=status, diagnostic=diagnostic[:1000], delivery_ids=ids, named_addresses=named,
                    from_address=_PROVIDER_NAMES[event.provider], permanent=found.permanent,
                    still_trying=event.still_trying and not found.permanent)


_PROVIDER_NAMES = {"ses": "Amazon SES", "sendgrid": "SendGrid", "postmark": "Postmark", "mailgun": "Mailgun"}
# what a provider's verdict means when neither a status nor the server's words commit to anything
_VERDICT_CLASS = {Verdict.GONE: BounceClass.MAILBOX_GONE, Verdict.POLICY: BounceClass.POLICY_BLOCK,
                  Verdict.TRANSIENT: BounceClass.TRANSIENT}


def bounce_class(event: ProviderEvent) -> tuple[BounceClass, str]:
    """What the bounce says about the address, and the enhanced status it was judged by ("" for none).

    The receiving server's status, reply code and words decide, as in a DSN (COMPLIANCE 27);
    the provider's own verdict ("hard bounce", "blocked") only where they commit to nothing."""
    status = event.status.strip() or enhanced_status(event.diagnostic)
    found = classify(reply_code(event.diagnostic), status, event.diagnostic)
    committed = bool(status) and not status.endswith(".0.0")
    if found is BounceClass.FAILED and not committed and event.verdict is not Verdict.UNKNOWN:
        return _VERDICT_CLASS[event.verdict], status
    return found, status


def _unsubscribe(session: Session, config: Config, event: ProviderEvent,
                 delivery_id: int | None) -> tuple[InboundKind, str]:
    claim = _claim_for(session, delivery_id)
    if claim is None:
        return InboundKind.UNMATCHED, "an unsubscribe for no delivery of ours"
    subscriber = session.get(Subscriber, claim.subscriber_id)
    if subscriber is None or (event.recipient and subscriber.email_normalized != normalize_email(event.recipient)):
        return InboundKind.UNMATCHED, f"an unsubscribe for delivery {delivery_id} naming someone else; nothing done"
    result = unsubscribe(session, config, claim, f"{event.provider} webhook", actor="inbound")
    if not result.changed:
        return InboundKind.UNSUBSCRIBE, f"{result.masked_email} was already unsubscribed"
    scope = f"the list {result.list_title}" if result.list_title else "everything"
    return InboundKind.UNSUBSCRIBE, f"{result.masked_email} unsubscribed from {scope} (by {event.provider})"


def _claim_for(session: Session, delivery_id: int | None) -> UnsubscribeClaim | None:
    if delivery_id is None:
        return None
    row = session.execute(sa.select(Delivery.subscriber_id, Delivery.campaign_id, Campaign.list_id)
                          .join(Campaign, Campaign.id == Delivery.campaign_id)
                          .where(Delivery.id == delivery_id)).one_or_none()
    if row is None or row.subscriber_id is None:
        return None
    return UnsubscribeClaim(row.subscriber_id, row.list_id, row.campaign_id)


def remember_token(session: Session, provider: str, token: str, now: dt.datetime | None = None) -> bool:
    """Note a one-time webhook token in the caller's transaction; False when it was seen before.

    Tokens older than their timestamps' window are forgotten here, so the table stays small."""
    now = now or utcnow()
    digest = hashlib.sha256(f"{provider}:{token}".encode("utf-8", "replace")).hexdigest()
    session.execute(sa.delete(WebhookToken).where(WebhookToken.seen_at < now - _TOKEN_MEMORY))
    if session.scalar(sa.select(WebhookToken.id).where(WebhookToken.token_hash == digest)):
        return False
    session.add(WebhookToken(provider=provider, token_hash=digest, seen_at=now))
    session.flush()
    return True
