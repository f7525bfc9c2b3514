"""Double opt-in: send the confirmation message with its signed link, and confirm on click."""

from __future__ import annotations

import asyncio
import email.policy
import enum
import html
from dataclasses import dataclass, replace
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

import sqlalchemy as sa
from sqlalchemy.orm import Session

from mailer.addresses import parse_mailbox
from mailer.audit import record_event
from mailer.config import Config
from mailer.consent import request_origin
from mailer.content.compose import header_address
from mailer.content.dkim import signer_from_config
from mailer.delivery.transport import SendResult, SendStatus, SmtpTransport
from mailer.errors import DeliveryError, NotFoundError, TokenError
from mailer.models import MailingList, Subscriber, Subscription, SubscriptionStatus, utcnow
from mailer.recipients.lists import get_list
from mailer.recipients.optout import mask_email
from mailer.recipients.subscribers import get_subscriber
from mailer.recipients.suppression import is_suppressed
from mailer.tokens import make_confirm_token, read_confirm_token


class ConfirmOutcome(enum.StrEnum):
    """What following a confirmation link did."""

    CONFIRMED = "confirmed"  # the subscription is now active
    ALREADY = "already confirmed"  # it was active before; nothing changed
    OPTED_OUT = "opted out"  # the person unsubscribed or is suppressed since; nothing changed


@dataclass(frozen=True)
class ConfirmationRequest:
    """One confirmation message to send: who, for which list, with which link."""

    email: str
    recipient: str  # the address as it goes into To and RCPT TO (an IDN domain in ASCII)
    name: str
    list_name: str
    list_title: str
    url: str


@dataclass(frozen=True)
class ConfirmResult:
    outcome: ConfirmOutcome
    masked_email: str
    list_title: str


def confirm_url(config: Config, subscriber_id: int, list_id: int) -> str:
    token = make_confirm_token(config.require_secret_keys(), subscriber_id, list_id)
    return f"{config.unsubscribe.base_url.rstrip('/')}/confirm/{token}"


def prepare_confirmation(session: Session, config: Config, email: str, list_name: str) -> ConfirmationRequest:
    """The confirmation to send for an unconfirmed subscription.

    Raises NotFoundError when the address is not waiting for confirmation on that list, and
    InvalidInputError when no message can be addressed to it (a non-ASCII mailbox name).
    """
    subscriber = get_subscriber(session, email)
    mailing_list = get_list(session, list_name)
    subscription = _subscription(session, subscriber.id, mailing_list.id)
    if subscription is None or subscription.status is not SubscriptionStatus.UNCONFIRMED:
        raise NotFoundError(f"{subscriber.email} is not waiting for confirmation on {list_name}")
    if is_suppressed(session, subscriber.email):
        raise NotFoundError(f"{subscriber.email} has opted out; no confirmation is sent")
    return ConfirmationRequest(
        email=subscriber.email,
        recipient=header_address(subscriber.email),
        name=subscriber.name,
        list_name=mailing_list.name,
        list_title=mailing_list.title or mailing_list.name,
        url=confirm_url(config, subscriber.id, mailing_list.id),
    )


def pending_confirmation(
    session: Session, config: Config, email: str, list_name: str
) -> ConfirmationRequest | None:
    """The confirmation a subscription still waits for, or None when it needs none."""
    subscriber = get_subscriber(session, email)
    subscription = _subscription(session, subscriber.id, get_list(session, list_name).id)
    if subscription is None or subscription.status is not SubscriptionStatus.UNCONFIRMED:
        return None
    return prepare_confirmation(session, config, email, list_name)


def build_confirmation_message(config: Config, request: ConfirmationRequest) -> EmailMessage:
    """A transactional message: honest headers, the link, how long it lasts, who we are."""
    days = config.consent.confirm_expiry / 86400
    lasts = f"{days:g} days" if days >= 1 else f"{config.consent.confirm_expiry / 3600:g} hours"
    company = config.company
    greeting = f"Hello {request.name}," if request.name else "Hello,"
    text = (
        f"{greeting}\n\n"
        f"Someone, hopefully you, asked to receive \"{request.list_title}\" from {company.name} "
        f"at this address. Please confirm by opening this link within {lasts}:\n\n"
        f"{request.url}\n\n"
        "If you did not ask for this, ignore this message: you will not be added and we "
        "will not write again.\n\n"
        f"{company.name}, {company.postal_address}\n"
        f"Privacy policy: {company.privacy_url}\n"
    )
    e = html.escape
    body = (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"></head><body>\n"
        f"<p>{e(greeting)}</p>\n"
        f"<p>Someone, hopefully you, asked to receive &ldquo;{e(request.list_title)}&rdquo; from "
        f"{e(company.name)} at this address. Please confirm within {e(lasts)}:</p>\n"
        f"<p><a href=\"{e(request.url)}\">Yes, subscribe me</a></p>\n"
        f"<p>Or open this link: {e(request.url)}</p>\n"
        "<p>If you did not ask for this, ignore this message: you will not be added and we "
        "will not write again.</p>\n"
        f"<p>{e(company.name)}, {e(company.postal_address)}<br>\n"
        f"<a href=\"{e(company.privacy_url)}\">Privacy policy</a></p>\n"
        "</body></html>\n"
    )
    return transactional_message(config, request.name, request.recipient,
                                 f"Please confirm your subscription to {request.list_title}",
                                 "confirm", text, body)


def transactional_message(
    config: Config, name: str, recipient: str, subject: str, msgid_kind: str, text: str, html_body: str
) -> EmailMessage:
    """A transactional message from the configured sender to one person, with a text and an HTML part."""
    message = EmailMessage()
    message["From"] = parse_mailbox(config.sender.from_address)
    # a structured Address encodes a non-ASCII name and can never carry a line break
    message["To"] = Address(display_name=name, addr_spec=recipient)
    message["Subject"] = subject
    message["Date"] = format_datetime(utcnow())
    message["Message-ID"] = make_msgid(msgid_kind, domain=config.sender.sending_domain)
    if config.sender.reply_to:
        message["Reply-To"] = parse_mailbox(config.sender.reply_to)
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to this
    message.set_content(text)
    message.add_alternative(html_body, subtype="html")
    return message


def bounce_address(config: Config) -> str:
    """The envelope sender of transactional mail: a bounce goes to the bounce domain."""
    return f"confirm@{config.sender.bounce_domain}"


async def _deliver(config: Config, data: bytes, recipient: str) -> SendResult:
    # the campaign transport: the same TLS policy, credentials and reply handling, one connection
    transport = SmtpTransport(replace(config.smtp, connections=1))
    try:
        return await transport.send(bounce_address(config), recipient, data)
    finally:
        await transport.close()


def send_transactional(config: Config, message: EmailMessage, recipient: str) -> None:
    """Send one transactional message (a confirmation, an identity link) through the configured
    relay, DKIM-signed when configured.

    Raises DeliveryError, carrying the relay's reply, when it cannot be reached or refuses the message.
    """
    data = message.as_bytes(policy=email.policy.SMTP)
    signer = signer_from_config(config)
    if signer is not None:
        data = signer.sign(data) + data
    result = asyncio.run(_deliver(config, data, recipient))
    if result.status is not SendStatus.SENT:
        raise DeliveryError(" ".join(result.response.split()))


def send_confirmation(config: Config, request: ConfirmationRequest) -> None:
    """Send one confirmation message through the configured relay, DKIM-signed when configured.

    Raises DeliveryError when the relay cannot be reached or refuses the message.
    """
    try:
        send_transactional(config, build_confirmation_message(config, request), request.recipient)
    except DeliveryError as exc:
        raise DeliveryError(
            f"the confirmation message to {request.email} could not be sent "
            f"({exc}); they "
            f"stay unconfirmed: retry with `mailer subscriber send-confirmation {request.email} "
            f"--list {request.list_name}`"
        ) from None


def _subscription(session: Session, subscriber_id: int, list_id: int) -> Subscription | None:
    return session.scalar(sa.select(Subscription).where(
        Subscription.subscriber_id == subscriber_id, Subscription.list_id == list_id))


def _resolve(session: Session, config: Config, token: str) -> tuple[Subscription, Subscriber, MailingList]:
    subscriber_id, list_id, issued_at = read_confirm_token(
        config.require_secret_keys(), token, config.consent.confirm_expiry
    )
    subscription = _subscription(session, subscriber_id, list_id)
    # a link signed before the subscription existed named someone erased since, whose row id
    # SQLite gave to the next person: it must not confirm (or reveal) that person
    if subscription is None or subscription.created_at.replace(microsecond=0) > issued_at:
        # erased, or never ours: say no more than for a tampered link
        raise TokenError("invalid confirmation token")
    return subscription, subscription.subscriber, subscription.mailing_list


def inspect_confirmation(session: Session, config: Config, token: str) -> ConfirmResult:
    """What a link would confirm, changing nothing (mail scanners fetch links).

    Raises TokenError for a tampered, expired or unknown link.
    """
    subscription, subscriber, mailing_list = _resolve(session, config, token)
    return ConfirmResult(_outcome_now(session, subscription, subscriber) or ConfirmOutcome.CONFIRMED,
                         mask_email(subscriber.email), mailing_list.title or mailing_list.name)


def _outcome_now(session: Session, subscription: Subscription, subscriber: Subscriber) -> ConfirmOutcome | None:
    if subscription.status is SubscriptionStatus.UNSUBSCRIBED or is_suppressed(session, subscriber.email):
        return ConfirmOutcome.OPTED_OUT
    if subscription.status is SubscriptionStatus.ACTIVE:
        return ConfirmOutcome.ALREADY
    return None


def confirm_subscription(
    session: Session, config: Config, token: str, ip: str | None = None, user_agent: str | None = None
) -> ConfirmResult:
    """Activate the subscription a link names, recording when and from where; repeating is harmless.

    An address that opted out since is never re-activated. Raises TokenError for a
    tampered, expired or unknown link.
    """
    subscription, subscriber, mailing_list = _resolve(session, config, token)
    title = mailing_list.title or mailing_list.name
    settled = _outcome_now(session, subscription, subscriber)
    if settled is not None:
        return ConfirmResult(settled, mask_email(subscriber.email), title)
    subscription.status = SubscriptionStatus.ACTIVE
    subscription.confirmed_at = utcnow()
    subscription.confirmed_ip, subscription.confirmed_user_agent = request_origin(ip, user_agent)
    record_event(session, "confirm", "web", subject=subscriber.email, reason="double opt-in confirmation",
                 detail={"list": mailing_list.name})
    session.flush()
    return ConfirmResult(ConfirmOutcome.CONFIRMED, mask_email(subscriber.email), title)
