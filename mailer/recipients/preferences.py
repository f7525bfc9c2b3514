"""The preference centre: the lists a person chooses, the identity links that open their data, a new address."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

import jinja2
import sqlalchemy as sa
from sqlalchemy.orm import Session

from mailer.audit import insert_event, record_event
from mailer.config import Config
from mailer.consent import request_origin
from mailer.content.compose import header_address
from mailer.content.templating import layout_environment
from mailer.db import normalize_email
from mailer.errors import InvalidInputError, TokenError
from mailer.models import (
    IdentityLink,
    IdentityPurpose,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    utcnow,
)
from mailer.recipients.confirm import (
    ConfirmationRequest,
    prepare_confirmation,
    send_confirmation,
    send_transactional,
    transactional_message,
)
from mailer.recipients.optout import OptOutResult, mask_email, unsubscribe
from mailer.recipients.subscribers import check_email, find_subscriber
from mailer.recipients.suppression import is_suppressed
from mailer.tokens import (
    UnsubscribeClaim,
    make_identity_token,
    make_preferences_token,
    read_identity_token,
    read_preferences_token,
)

# how long an emailed identity link works: a forwarded footer must not open someone's data for long
IDENTITY_LINK_SECONDS = 3600
# what the audit trail and a consent record name as the source of a change made on these pages
SOURCE = "preferences"


@dataclass(frozen=True)
class Origin:
    """Where a web request came from, as the audit trail and consent records keep it."""

    ip: str | None
    user_agent: str | None

    def detail(self) -> dict[str, Any]:
        ip, user_agent = request_origin(self.ip, self.user_agent)
        return {"source": SOURCE, "ip": ip, "user_agent": user_agent}


@dataclass(frozen=True)
class ListChoice:
    """One list on the preference page and where the person stands on it."""

    list_id: int
    title: str
    status: SubscriptionStatus

    @property
    def receiving(self) -> bool:
        return self.status is not SubscriptionStatus.UNSUBSCRIBED


@dataclass(frozen=True)
class PreferenceView:
    """What the preference page shows: the masked address, whether it opted out of all mail, its lists."""

    subscriber_id: int
    masked_email: str
    suppressed: bool
    lists: list[ListChoice]


@dataclass(frozen=True)
class ChoiceResult:
    """What saving the list choice did."""

    left: list[str]  # titles of the lists the person left
    joining: list[str]  # titles of the lists waiting for the person's confirmation
    refused: list[str]  # titles not re-joined: the address opted out of all mail
    confirmations: list[ConfirmationRequest]  # to send once the transaction has committed


@dataclass(frozen=True)
class PendingMail:
    """A transactional message to send once the transaction that prepared it has committed."""

    message: EmailMessage
    recipient: str


def preferences_url(config: Config, subscriber_id: int) -> str:
    token = make_preferences_token(config.require_secret_keys(), subscriber_id)
    return f"{config.unsubscribe.base_url.rstrip('/')}/p/{token}"


def subscriber_from_token(session: Session, config: Config, token: str) -> Subscriber:
    """The subscriber a preference link names; TokenError when it is not ours or they were erased."""
    subscriber = session.get(Subscriber, read_preferences_token(config.require_secret_keys(), token))
    if subscriber is None:
        raise TokenError("invalid preferences token")
    return subscriber


def preference_view(session: Session, subscriber: Subscriber) -> PreferenceView:
    """The person's lists (those they left included, so they can come back) by title."""
    lists = [
        ListChoice(sub.list_id, sub.mailing_list.title or sub.mailing_list.name, sub.status)
        for sub in sorted(subscriber.subscriptions, key=lambda s: s.mailing_list.name)
    ]
    return PreferenceView(subscriber.id, mask_email(subscriber.email),
                          is_suppressed(session, subscriber.email), lists)


def save_list_choice(
    session: Session, config: Config, subscriber: Subscriber, chosen: set[int], origin: Origin
) -> ChoiceResult:
    """Leave the lists not chosen; a list chosen again waits for a confirmation mailed to the address.

    An address that opted out of all mail is never re-subscribed from here: the lists it chose
    are refused, and the result says so.
    """
    now = utcnow()
    suppressed = is_suppressed(session, subscriber.email)
    left: list[str] = []
    joining: list[tuple[Subscription, str]] = []
    refused: list[str] = []
    for sub in sorted(subscriber.subscriptions, key=lambda s: s.mailing_list.name):
        title = sub.mailing_list.title or sub.mailing_list.name
        if sub.list_id not in chosen and sub.status is not SubscriptionStatus.UNSUBSCRIBED:
            sub.status, sub.unsubscribed_at = SubscriptionStatus.UNSUBSCRIBED, now
            left.append(title)
        elif sub.list_id in chosen and sub.status is SubscriptionStatus.UNSUBSCRIBED:
            if suppressed:
                refused.append(title)
            else:
                _rejoin(sub, origin, now)
                joining.append((sub, title))
    session.flush()
    detail = origin.detail()
    if left:
        insert_event(session, "unsubscribe", "web", subject=subscriber.email, reason=SOURCE,
                     detail={**detail, "scope": "list", "lists": left, "at": now.isoformat()}, at=now)
    if joining:
        record_event(session, "resubscribe", "web", subject=subscriber.email,
                     reason="chosen again in the preference centre; waits for confirmation",
                     detail={**detail, "lists": [title for _, title in joining]})
    confirmations = [prepare_confirmation(session, config, subscriber.email, sub.mailing_list.name)
                     for sub, _ in joining]
    return ChoiceResult(left, [title for _, title in joining], refused, confirmations)


def _rejoin(sub: Subscription, origin: Origin, now: dt.datetime) -> None:
    # a footer link may have been forwarded: the address itself confirms before mail flows again
    sub.status = SubscriptionStatus.UNCONFIRMED
    sub.unsubscribed_at = None
    sub.confirmed_at = sub.confirmed_ip = sub.confirmed_user_agent = None
    sub.consent_at, sub.consent_source = now, SOURCE
    sub.consent_ip, sub.consent_user_agent = request_origin(origin.ip, origin.user_agent)


def send_confirmations(config: Config, result: ChoiceResult) -> None:
    """Mail the confirmation of each list chosen again; raises DeliveryError when the relay refuses."""
    for request in result.confirmations:
        send_confirmation(config, request)


def leave_everything(session: Session, config: Config, subscriber: Subscriber, origin: Origin) -> OptOutResult:
    """The page's one button: exactly the unsubscribe link's opt-out from all mail."""
    claim = UnsubscribeClaim(subscriber.id, None, None)  # no list: every list, and the suppression
    return unsubscribe(session, config, claim, SOURCE, ip=origin.ip, user_agent=origin.user_agent, actor="web")


# --- identity links -------------------------------------------------------------------------


def _identity_url(config: Config, nonce: str) -> str:
    token = make_identity_token(config.require_secret_keys(), nonce)
    return f"{config.unsubscribe.base_url.rstrip('/')}/me/{token}"


def _issue_link(session: Session, subscriber: Subscriber, purpose: IdentityPurpose,
                new_email: str | None = None) -> str:
    now = utcnow()
    # spent links keep a new address nobody confirmed: gone once they cannot open anything
    session.execute(sa.delete(IdentityLink).where(IdentityLink.expires_at <= now))
    nonce = secrets.token_urlsafe(24)
    session.add(IdentityLink(nonce=nonce, subscriber_id=subscriber.id, purpose=purpose, new_email=new_email,
                             created_at=now, expires_at=now + dt.timedelta(seconds=IDENTITY_LINK_SECONDS)))
    session.flush()
    return nonce


def identity_link_for(
    session: Session, config: Config, subscriber: Subscriber, origin: Origin
) -> PendingMail:
    """A one-hour, single-use link to the person's data, as a message to their address."""
    url = _identity_url(config, _issue_link(session, subscriber, IdentityPurpose.SEE_DATA))
    record_event(session, "identity_link", "web", subject=subscriber.email,
                 reason="a link to the personal data page was mailed to the address", detail=origin.detail())
    return PendingMail(_link_message(config, "identity_link", subscriber.email, subscriber.name,
                                     url, "Your link to the data we hold about you"),
                       header_address(subscriber.email))


def identity_link_by_address(session: Session, config: Config, email: str, origin: Origin) -> PendingMail | None:
    """The identity link for whoever has this address, or None when nobody does (the caller's
    answer must not tell the difference). Raises InvalidInputError for what is no address at all."""
    subscriber = find_subscriber(session, check_email(email))
    if subscriber is None:
        return None
    return identity_link_for(session, config, subscriber, origin)


def address_change_link(
    session: Session, config: Config, subscriber: Subscriber, new_email: str, origin: Origin
) -> PendingMail | None:
    """A confirmation to the new address; nothing changes until it is followed.

    None (and nothing sent) when the new address opted out or belongs to someone else: the
    caller answers the same either way. Raises InvalidInputError for a malformed address or
    the one already held.
    """
    address = check_email(new_email)
    key = normalize_email(address)
    if key == subscriber.email_normalized:
        raise InvalidInputError("that is already the address we hold")
    # recorded alike whatever happens next: the person's own export must not tell whose the address is
    record_event(session, "address_change_requested", "web", subject=subscriber.email,
                 reason="asked to move to a new address; it changes when the new address confirms",
                 detail=origin.detail())
    if is_suppressed(session, key) or find_subscriber(session, key) is not None:
        return None
    nonce = _issue_link(session, subscriber, IdentityPurpose.CHANGE_ADDRESS, new_email=address)
    return PendingMail(_link_message(config, "address_change", address, subscriber.name,
                                     _identity_url(config, nonce), "Please confirm your new address"),
                       header_address(address))


def send_pending(config: Config, mail: PendingMail) -> None:
    """Send a prepared message; raises DeliveryError when the relay does not take it."""
    send_transactional(config, mail.message, mail.recipient)


def _link_message(config: Config, template: str, to: str, name: str, url: str, subject: str) -> EmailMessage:
    env = layout_environment()
    minutes = IDENTITY_LINK_SECONDS // 60
    context = {"company": config.company, "name": name, "url": url, "minutes": minutes, "new_email": to}
    try:
        text = env.get_template(f"{template}.txt.j2").render(context)
        html = env.get_template(f"{template}.html.j2").render(context)
    except jinja2.TemplateError as exc:  # our own templates: a packaging fault, not user input
        raise RuntimeError(f"the {template} email templates are broken: {exc}") from exc
    return transactional_message(config, name, header_address(to), subject, "identity", text, html)


def find_identity_link(session: Session, config: Config, token: str) -> IdentityLink:
    """The live link a token names; TokenError when it is forged, expired, closed or its person erased."""
    nonce = read_identity_token(config.require_secret_keys(), token, IDENTITY_LINK_SECONDS)
    link = session.scalar(sa.select(IdentityLink).where(IdentityLink.nonce == nonce))
    if link is None or link.closed_at is not None or link.expires_at <= utcnow():
        raise TokenError("invalid or expired identity link")
    return link


def open_identity_link(session: Session, link: IdentityLink) -> str:
    """Spend the link: the first opening gets the secret its page's forms carry; any later one a TokenError."""
    secret = secrets.token_urlsafe(24)
    # the test is made again under the row lock: of two openings racing on PostgreSQL, one wins
    spent = session.scalar(
        sa.update(IdentityLink)
        .where(IdentityLink.id == link.id, IdentityLink.used_at.is_(None))
        .values(used_at=utcnow(), session_hash=_digest(secret))
        .returning(IdentityLink.id)
    )
    session.expire(link, ["used_at", "session_hash"])
    if spent is None:
        raise TokenError("this identity link was used already")
    return secret


def check_link_session(link: IdentityLink, secret: str) -> None:
    """Raises TokenError unless `secret` is the one the link's first opening handed out."""
    if link.session_hash is None or not hmac.compare_digest(link.session_hash, _digest(secret)):
        raise TokenError("this page has expired; ask for a new link")


def close_identity_link(link: IdentityLink) -> None:
    link.closed_at = utcnow()


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def link_subscriber(session: Session, link: IdentityLink) -> Subscriber:
    subscriber = session.get(Subscriber, link.subscriber_id)
    assert subscriber is not None  # the link goes with its subscriber (ON DELETE CASCADE)
    return subscriber
