"""Subscribers: validate addresses and names, subscribe people to lists, look them up."""

from __future__ import annotations

import datetime as dt
import enum
import functools
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from email_validator import EmailNotValidError, validate_email
from sqlalchemy.orm import Session

from mailer.db import normalize_email
from mailer.errors import InvalidInputError, NotFoundError, SuppressedError, check_unicode
from mailer.models import (
    MailingList,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    utcnow,
)
from mailer.recipients.lists import get_list
from mailer.recipients.suppression import find_suppression, is_suppressed

MAX_NAME_LENGTH = 200
MAX_ATTRIBUTE_KEY = 64
MAX_ATTRIBUTE_VALUE = 1000


class AddOutcome(enum.StrEnum):
    """What subscribing one address to one list did."""

    ADDED = "added"  # newly on the list (new person, or a known person new to the list)
    UPDATED = "updated"  # already on the list; name or attributes changed
    UNCHANGED = "already subscribed"  # already on the list; nothing changed
    SUPPRESSED = "suppressed"  # opted out or erased: never re-subscribed
    UNSUBSCRIBED = "unsubscribed"  # left this list earlier: not re-subscribed by the marketer


# control characters and the Unicode line and paragraph separators: none may reach a header
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_ATTRIBUTE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# an unquoted ASCII local part: email-validator accepts every one of these as it is
_PLAIN_LOCAL_PART = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*\Z")


@functools.lru_cache(maxsize=8192)
def _checked_domain(domain: str) -> str:
    # the domain checks are most of email-validator's cost, and a list repeats few domains
    return str(validate_email(f"postmaster@{domain}", check_deliverability=False).domain)


def check_email(raw: str) -> str:
    """Validate an address's syntax (no network); return it normalized. Raises InvalidInputError."""
    candidate = raw.strip()
    if not candidate:
        raise InvalidInputError("the email address is empty")
    if _CONTROL.search(candidate):
        raise InvalidInputError(f"invalid email address {candidate!r}: it contains a control character")
    local, at, domain = candidate.rpartition("@")
    if not local.isascii():
        # such a mailbox can only be reached over SMTPUTF8, which the mailer does not speak
        raise InvalidInputError(
            f"invalid email address {candidate!r}: a non-ASCII mailbox name needs SMTPUTF8, "
            "which this mailer does not send"
        )
    if at and len(local) <= 64 and _PLAIN_LOCAL_PART.match(local):
        try:
            address = f"{local}@{_checked_domain(domain)}"
        except EmailNotValidError:
            pass  # the full check below gives the reason
        else:
            if len(address.encode("utf-8")) <= 254:
                return address
    try:
        result = validate_email(candidate, check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidInputError(f"invalid email address {candidate!r}: {exc}") from None
    return str(result.normalized)


def check_name(raw: str) -> str:
    """A display name: one line, no control characters, at most 200 characters."""
    name = check_unicode("a name", raw.strip())
    if _CONTROL.search(name):
        raise InvalidInputError("a name must not contain line breaks or control characters")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidInputError(f"a name must be at most {MAX_NAME_LENGTH} characters")
    return name


def check_attribute_key(raw: str) -> str:
    """An attribute name is an identifier that templates can use: `subscriber.attributes.city`."""
    key = raw.strip()
    if not _ATTRIBUTE_KEY.match(key):
        raise InvalidInputError(
            f"invalid attribute name {key!r}: use letters, digits and '_', not starting with a digit"
        )
    if len(key) > MAX_ATTRIBUTE_KEY:
        raise InvalidInputError(f"attribute name {key!r} is longer than {MAX_ATTRIBUTE_KEY} characters")
    return key


def check_attribute_value(key: str, value: str) -> str:
    """An attribute value is one line of text of bounded length."""
    check_unicode(f"attribute {key!r}", value)
    if _CONTROL.search(value):
        raise InvalidInputError(f"attribute {key!r} must not contain line breaks or control characters")
    if len(value) > MAX_ATTRIBUTE_VALUE:
        raise InvalidInputError(f"attribute {key!r} is longer than {MAX_ATTRIBUTE_VALUE} characters")
    return value


def check_attributes(raw: Mapping[str, str]) -> dict[str, str]:
    """Attribute keys are identifiers templates can use; values are one line of text."""
    return {check_attribute_key(key): check_attribute_value(key, value) for key, value in raw.items()}


def split_attribute_options(pairs: tuple[str, ...] | list[str], usage: str = "KEY=VALUE") -> dict[str, str]:
    """Repeated --attr KEY=VALUE options as a dict, unchecked; raises InvalidInputError without '='."""
    result: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise InvalidInputError(f"--attr takes {usage}; got {pair!r}")
        result[key.strip()] = value
    return result


def parse_attribute_options(pairs: tuple[str, ...] | list[str]) -> dict[str, str]:
    """Turn repeated --attr KEY=VALUE options into a checked dict; raises InvalidInputError."""
    return check_attributes(split_attribute_options(pairs))


@dataclass(frozen=True)
class Consent:
    """How a subscription was given (GDPR art. 7)."""

    source: str
    at: dt.datetime | None = None
    ip: str | None = None
    user_agent: str | None = None


def find_subscriber(session: Session, email: str) -> Subscriber | None:
    return session.scalar(sa.select(Subscriber).where(Subscriber.email_normalized == normalize_email(email)))


def get_subscriber(session: Session, email: str) -> Subscriber:
    """The subscriber with this address (any case); raises NotFoundError."""
    found = find_subscriber(session, email)
    if found is None:
        raise NotFoundError(f"no subscriber with address {email.strip()!r}")
    return found


def add_subscriber(
    session: Session,
    email: str,
    list_name: str,
    consent: Consent,
    name: str | None = None,
    attributes: Mapping[str, str] | None = None,
) -> tuple[Subscriber | None, AddOutcome]:
    """Subscribe an address to a list, creating or updating the person.

    Raises InvalidInputError for a bad address, name or attribute, NotFoundError for an
    unknown list and SuppressedError for an address that opted out or was erased.
    """
    address = check_email(email)
    clean_name = check_name(name) if name is not None else None
    clean_attrs = check_attributes(attributes or {})
    mailing_list = get_list(session, list_name)
    if is_suppressed(session, address):
        raise SuppressedError(f"{address} is on the suppression list and cannot be subscribed")
    subscriber = find_subscriber(session, address)
    created = subscriber is None
    if subscriber is None:
        subscriber = Subscriber(
            email=address, email_normalized=normalize_email(address),
            name=clean_name or "", attributes=clean_attrs,
        )
        session.add(subscriber)
        session.flush()
    # an empty name in a later sign-up keeps the one held
    changed = not created and bool(update_profile(subscriber, clean_name or None, clean_attrs))
    outcome = _subscribe(session, subscriber, mailing_list, consent)
    if outcome is AddOutcome.UNCHANGED and changed:
        outcome = AddOutcome.UPDATED
    session.flush()
    return subscriber, outcome


@dataclass(frozen=True)
class ProfileChange:
    """A subscriber's name and attributes after an update, and what changed, in order."""

    name: str
    attributes: dict[str, Any]
    changed: list[str]  # "name", "attribute city removed", "attribute city"


def merge_profile(
    name: str,
    attributes: Mapping[str, Any],
    new_name: str | None,
    new_attributes: Mapping[str, str],
    removing: Iterable[str] = (),
) -> ProfileChange:
    """Merge checked values into a profile: a new name (None keeps it), attributes set over the
    ones held (the others stay), and the attributes in `removing` taken out."""
    changed: list[str] = []
    if new_name is not None and new_name != name:
        name = new_name
        changed.append("name")
    merged = dict(attributes)
    for key in removing:
        if key in merged:
            del merged[key]
            changed.append(f"attribute {key} removed")
    for key, value in new_attributes.items():
        if merged.get(key) != value:
            merged[key] = value
            changed.append(f"attribute {key}")
    return ProfileChange(name, merged, changed)


def update_profile(
    subscriber: Subscriber,
    name: str | None,
    attributes: Mapping[str, str],
    removing: Iterable[str] = (),
) -> list[str]:
    """Merge checked values into a subscriber's profile (see merge_profile); what changed."""
    change = merge_profile(subscriber.name, subscriber.attributes, name, attributes, removing)
    if change.changed:
        subscriber.name = change.name
        subscriber.attributes = change.attributes
    return change.changed


def new_subscription_status(double_opt_in: bool, now: dt.datetime) -> tuple[SubscriptionStatus, dt.datetime | None]:
    """A new subscription's status and confirmation time: on a double opt-in list it is
    unconfirmed, and gets no mail, until the person follows the link."""
    if double_opt_in:
        return SubscriptionStatus.UNCONFIRMED, None
    return SubscriptionStatus.ACTIVE, now


def _subscribe(
    session: Session, subscriber: Subscriber, mailing_list: MailingList, consent: Consent
) -> AddOutcome:
    existing = session.scalar(
        sa.select(Subscription).where(
            Subscription.subscriber_id == subscriber.id, Subscription.list_id == mailing_list.id
        )
    )
    if existing is not None:
        if existing.status is SubscriptionStatus.UNSUBSCRIBED:
            return AddOutcome.UNSUBSCRIBED
        return AddOutcome.UNCHANGED
    now = utcnow()
    status, confirmed_at = new_subscription_status(mailing_list.double_opt_in, now)
    session.add(
        Subscription(
            subscriber_id=subscriber.id,
            list_id=mailing_list.id,
            status=status,
            consent_at=consent.at or now,
            consent_source=consent.source,
            consent_ip=consent.ip,
            consent_user_agent=consent.user_agent,
            confirmed_at=confirmed_at,
        )
    )
    return AddOutcome.ADDED


def iter_list_members(session: Session, list_name: str) -> Iterator[tuple[Subscriber, Subscription]]:
    """Every subscriber of a list with their subscription, by address, streamed."""
    mailing_list = get_list(session, list_name)
    query = (
        sa.select(Subscriber, Subscription)
        .join(Subscription, Subscription.subscriber_id == Subscriber.id)
        .where(Subscription.list_id == mailing_list.id)
        .order_by(Subscriber.email_normalized)
        .execution_options(yield_per=1000)
    )
    yield from ((subscriber, subscription) for subscriber, subscription in session.execute(query))


def describe_subscriber(session: Session, email: str) -> dict[str, Any]:
    """A subscriber's profile, subscriptions with consent, and suppression, as plain data."""
    subscriber = get_subscriber(session, email)
    suppression = find_suppression(session, subscriber.email)
    return {
        "email": subscriber.email,
        "name": subscriber.name,
        "attributes": subscriber.attributes,
        "created_at": subscriber.created_at.isoformat(),
        "subscriptions": [
            {
                "list": sub.mailing_list.name,
                "status": sub.status.value,
                "consent": {
                    "at": sub.consent_at.isoformat(),
                    "source": sub.consent_source,
                    "ip": sub.consent_ip,
                    "user_agent": sub.consent_user_agent,
                },
                "confirmed_at": sub.confirmed_at.isoformat() if sub.confirmed_at else None,
                "unsubscribed_at": sub.unsubscribed_at.isoformat() if sub.unsubscribed_at else None,
            }
            for sub in sorted(subscriber.subscriptions, key=lambda s: s.mailing_list.name)
        ],
        "suppression": None if suppression is None else {
            "reason": suppression.reason.value,
            "source": suppression.source,
            "at": suppression.created_at.isoformat(),
        },
    }
