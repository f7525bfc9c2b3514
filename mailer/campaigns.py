"""Campaign service: create, list, check, preview and test-send campaigns."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from dataclasses import dataclass

import aiosmtplib
import sqlalchemy as sa
from sqlalchemy.orm import Session

from mailer.config import Config
from mailer.content.compliance import check_campaign, check_from, render_for_check
from mailer.content.compose import Composer, Recipient, RenderedMessage, sample_recipient
from mailer.content.containment import EXTERNAL_STYLESHEETS
from mailer.content.templating import load_template_source
from mailer.db import Database, normalize_email
from mailer.delivery.transport import client_options, tls_context
from mailer.errors import (
    ComplianceError,
    DeliveryError,
    InvalidInputError,
    NotFoundError,
    SuppressedError,
    TemplateError,
    check_unicode,
)
from mailer.models import (
    Campaign,
    CampaignKind,
    CampaignStatus,
    Delivery,
    MailingList,
    Subscriber,
    Subscription,
    SubscriptionStatus,
)
from mailer.recipients.lists import get_list
from mailer.recipients.subscribers import check_email
from mailer.recipients.suppression import is_suppressed

# the check renders the campaign once per distinct set of attribute names on the list, up to this many
MAX_CHECK_RECIPIENTS = 50
# distinct stored attribute texts whose names the scan keeps; past that it starts again
MAX_CHECK_TEXTS = 10_000


@dataclass(frozen=True)
class CampaignSummary:
    id: int
    kind: str
    status: str
    list_name: str
    subject: str
    template_name: str
    created_at: dt.datetime


@dataclass(frozen=True)
class CreatedCampaign:
    campaign: Campaign
    problems: list[str]  # what `campaign check` will refuse, reported at once


def create_campaign(
    session: Session,
    config: Config,
    *,
    list_name: str,
    subject: str,
    template: str,
    from_address: str | None = None,
) -> CreatedCampaign:
    """Store a draft campaign with its template text, so later edits to the file change nothing.

    Raises TemplateError for a template that is missing, does not parse, uses an unknown
    variable or loads an external stylesheet, InvalidInputError for a subject with a line break or a From outside the sending
    domain, and NotFoundError for an unknown list. Nothing is stored when it raises.
    """
    mailing_list = get_list(session, list_name)
    subject = check_unicode("the subject", subject.strip())
    if any(ch in subject for ch in "\r\n\x85\u2028\u2029"):
        raise InvalidInputError("the subject must be one line: it contains a line break")
    if len(subject.encode("utf-8")) > 900:
        raise InvalidInputError("the subject is too long (at most 900 bytes)")
    sender = (from_address or config.sender.from_address).strip()
    problems = check_from(config, sender)
    if problems:
        raise InvalidInputError(problems[0])
    source = load_template_source(template)
    campaign = Campaign(
        kind=CampaignKind.CAMPAIGN,
        list_id=mailing_list.id,
        subject=subject,
        from_address=sender,
        template_name=source.name,
        html_template=source.html,
        text_template=source.text,
        status=CampaignStatus.DRAFT,
    )
    session.add(campaign)
    session.flush()
    # a template that cannot render is bad input, not a draft to fix later: raising here
    # rolls the transaction back, so nothing is stored
    recipients = check_recipients(session, campaign) or [sample_recipient()]
    composer = Composer(config, campaign, mailing_list)
    for recipient in recipients:
        try:
            render_for_check(composer, recipient)
        except TemplateError as exc:
            raise TemplateError(f"the template fails for subscriber {recipient.email}: {exc}") from None
        for problem in composer.left_out(recipient):
            if problem in EXTERNAL_STYLESHEETS:  # never stored: nothing of another site's goes in the mail
                raise TemplateError(problem)
    problems = check_campaign(config, campaign, mailing_list, recipients=recipients)
    return CreatedCampaign(campaign, problems)


def list_campaigns(session: Session) -> list[CampaignSummary]:
    """Every campaign and notice, newest first."""
    rows = session.execute(
        sa.select(Campaign, MailingList.name)
        .outerjoin(MailingList, MailingList.id == Campaign.list_id)
        .order_by(Campaign.id.desc())
    )
    return [
        CampaignSummary(
            id=c.id, kind=c.kind.value, status=c.status.value, list_name=name or "",
            subject=c.subject, template_name=c.template_name, created_at=c.created_at,
        )
        for c, name in rows
    ]


def get_campaign(session: Session, campaign_id: int) -> Campaign:
    """The campaign with this id; raises NotFoundError."""
    campaign = session.get(Campaign, campaign_id)
    if campaign is None:
        raise NotFoundError(f"no campaign with id {campaign_id} (see `mailer campaign ls`)")
    return campaign


def campaign_list(session: Session, campaign: Campaign) -> MailingList | None:
    return session.get(MailingList, campaign.list_id) if campaign.list_id is not None else None


def recipient_for(subscriber: Subscriber, subscription: Subscription | None, delivery_id: int = 0) -> Recipient:
    """The Recipient the composer needs, from the database rows."""
    subscribed_at = None
    if subscription is not None:
        subscribed_at = subscription.confirmed_at or subscription.consent_at
    return Recipient(
        delivery_id=delivery_id, subscriber_id=subscriber.id, email=subscriber.email,
        name=subscriber.name, attributes=dict(subscriber.attributes or {}), subscribed_at=subscribed_at,
    )


def check_recipients(session: Session, campaign: Campaign, limit: int = MAX_CHECK_RECIPIENTS) -> list[Recipient]:
    """One active subscriber for each kind on the campaign's list: each set of attribute names,
    with and without a name.

    Rendering for each of them finds a template using an attribute some subscribers lack
    before the send, not in the middle of it.
    """
    if campaign.list_id is None:
        return []
    # narrow columns streamed: a million-subscriber list is scanned without loading rows; the
    # attributes as their stored text, decoded once per distinct text (most repeat)
    query = (
        sa.select(Subscriber.id, Subscriber.name, sa.cast(Subscriber.attributes, sa.Text))
        .join(Subscription, Subscription.subscriber_id == Subscriber.id)
        .where(Subscription.list_id == campaign.list_id, Subscription.status == SubscriptionStatus.ACTIVE)
        .order_by(Subscriber.id)
        .execution_options(yield_per=5000)
    )
    kinds: dict[tuple[frozenset[str], bool], int] = {}
    names_in: dict[str | None, frozenset[str]] = {}
    rows = session.execute(query)
    try:
        for subscriber_id, name, stored in rows:
            names = names_in.get(stored)
            if names is None:
                if len(names_in) >= MAX_CHECK_TEXTS:
                    names_in.clear()
                names = names_in[stored] = frozenset(json.loads(stored) or {}) if stored else frozenset()
            kinds.setdefault((names, bool(name)), subscriber_id)
            if len(kinds) >= limit:
                break
    finally:
        rows.close()  # a server-side cursor left open when we stop early would leak
    if not kinds:
        return []
    chosen = session.execute(
        sa.select(Subscriber, Subscription)
        .join(Subscription, Subscription.subscriber_id == Subscriber.id)
        .where(Subscription.list_id == campaign.list_id, Subscriber.id.in_(kinds.values()))
        .order_by(Subscriber.id)
    )
    return [recipient_for(subscriber, subscription) for subscriber, subscription in chosen]


def check_stored_campaign(session: Session, config: Config, campaign: Campaign) -> list[str]:
    """The compliance gate for a stored campaign, rendered for representative subscribers."""
    return check_campaign(
        config, campaign, campaign_list(session, campaign), recipients=check_recipients(session, campaign)
    )


def ensure_stored_campaign_compliant(session: Session, config: Config, campaign: Campaign) -> None:
    """The gate before a campaign starts or is scheduled; raises ComplianceError with every problem."""
    problems = check_stored_campaign(session, config, campaign)
    if problems:
        raise ComplianceError(problems)


def ensure_campaign_may_start(config: Config, database: Database, campaign_id: int) -> None:
    """The gate at schedule time too, so a broken campaign is found now and not at 3 a.m.

    Raises NotFoundError, ComplianceError or TemplateError.
    """
    with database.session() as session:
        campaign = get_campaign(session, campaign_id)
        ensure_stored_campaign_compliant(session, config, campaign)
        Composer(config, campaign, campaign.mailing_list)


def check_campaign_by_id(session: Session, config: Config, campaign_id: int) -> list[str]:
    return check_stored_campaign(session, config, get_campaign(session, campaign_id))


@dataclass(frozen=True)
class Preview:
    campaign: Campaign
    recipient: Recipient
    message: RenderedMessage


def find_recipient(session: Session, campaign: Campaign, email: str | None) -> Recipient:
    """The subscriber of the campaign's list with this address, or a made-up sample subscriber.

    The sample's unsubscribe link unsubscribes nobody, so a preview can be clicked through.
    Raises NotFoundError when the address is not on the list.
    """
    if email is None:
        return sample_recipient()
    row = session.execute(
        sa.select(Subscriber, Subscription)
        .join(Subscription, Subscription.subscriber_id == Subscriber.id)
        .where(Subscriber.email_normalized == normalize_email(email), Subscription.list_id == campaign.list_id)
    ).first()
    if row is None:
        raise NotFoundError(f"{email.strip()} is not on the campaign's list")
    subscriber, subscription = row
    delivery_id = session.scalar(
        sa.select(Delivery.id).where(Delivery.campaign_id == campaign.id, Delivery.subscriber_id == subscriber.id)
    )
    return recipient_for(subscriber, subscription, delivery_id or 0)


def preview_campaign(session: Session, config: Config, campaign_id: int, email: str | None = None) -> Preview:
    """One subscriber's message exactly as it would be sent (a sample subscriber without --email)."""
    campaign = get_campaign(session, campaign_id)
    recipient = find_recipient(session, campaign, email)
    composer = Composer(config, campaign, campaign_list(session, campaign))
    return Preview(campaign, recipient, composer.render(recipient))


def send_test(session: Session, config: Config, campaign_id: int, to: str) -> RenderedMessage:
    """Send one real message, its subject marked as a test, to `to` through the SMTP settings.

    The address gets the data of the list subscriber with that address, or of a sample
    subscriber; its unsubscribe link unsubscribes nobody else. Raises SuppressedError when the
    address has opted out of a commercial campaign, DeliveryError when the relay refuses or
    cannot be reached.
    """
    address = check_email(to)
    campaign = get_campaign(session, campaign_id)
    mailing_list = campaign_list(session, campaign)
    if campaign.kind is CampaignKind.CAMPAIGN and has_opted_out(session, address, campaign.list_id):
        # a test message is commercial mail all the same; an opt-out is honoured for it too
        # (a legal notice reaches those who opted out of marketing, and so does its test)
        raise SuppressedError(f"{address} has opted out or was erased; no test message is sent to it")
    try:
        recipient = find_recipient(session, campaign, address)
    except NotFoundError:
        recipient = sample_recipient(address)
    composer = Composer(config, campaign, mailing_list, test=True)
    message = composer.render(recipient)
    asyncio.run(deliver_one(config, message))
    return message


def has_opted_out(session: Session, address: str, list_id: int | None) -> bool:
    """True when the address is suppressed, or has left the list the campaign goes to."""
    if is_suppressed(session, address):
        return True
    if list_id is None:
        return False
    status = session.scalar(
        sa.select(Subscription.status)
        .join(Subscriber, Subscriber.id == Subscription.subscriber_id)
        .where(Subscriber.email_normalized == normalize_email(address), Subscription.list_id == list_id)
    )
    return status is SubscriptionStatus.UNSUBSCRIBED


async def deliver_one(config: Config, message: RenderedMessage) -> None:
    """Hand one message to the relay; STARTTLS as smtp.starttls says (required unless on loopback)."""
    smtp = config.smtp
    try:
        await aiosmtplib.send(
            message.data,
            sender=message.envelope_from,
            recipients=[message.recipient],
            use_tls=False,
            # TLS, certificates, EHLO name and login as every campaign's sending connections
            **client_options(smtp, tls_context(smtp)),
        )
    except aiosmtplib.SMTPRecipientsRefused as exc:
        reasons = "; ".join(f"{e.code} {e.message}" for e in exc.recipients)
        raise DeliveryError(f"the relay refused {message.recipient}: {reasons}") from None
    except aiosmtplib.SMTPResponseException as exc:
        raise DeliveryError(f"the relay {smtp.host}:{smtp.port} said {exc.code} {exc.message}") from None
    except (aiosmtplib.SMTPException, OSError) as exc:
        raise DeliveryError(f"cannot send through {smtp.host}:{smtp.port}: {exc}") from None
