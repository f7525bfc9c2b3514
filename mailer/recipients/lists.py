"""Mailing lists: create, find and count them."""

from __future__ import annotations

import re
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from mailer.errors import AlreadyExistsError, InvalidInputError, NotFoundError, check_unicode
from mailer.models import MailingList, Subscriber, Subscription, SubscriptionStatus, Suppression

_LIST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass(frozen=True)
class ListSummary:
    name: str
    title: str
    double_opt_in: bool
    active: int
    unconfirmed: int
    unsubscribed: int
    suppressed: int  # active subscriptions whose address opted out everywhere or bounced


MAX_CONSENT_TEXT = 1000


def create_list(
    session: Session, name: str, title: str = "", double_opt_in: bool = False, consent_text: str = ""
) -> MailingList:
    """Create a list; raises AlreadyExistsError or InvalidInputError.

    `consent_text`: the words its sign-up form shows beside the box people tick (empty: ours).
    """
    if not _LIST_NAME.match(name):
        raise InvalidInputError(
            f"invalid list name {name!r}: use up to 100 letters, digits, '.', '_' or '-'"
        )
    check_unicode("the list title", title)
    if any(ch in title for ch in "\r\n") or len(title) > 200:
        raise InvalidInputError("a list title must be one line of at most 200 characters")
    consent_text = check_unicode("the consent wording", consent_text.strip())
    if len(consent_text) > MAX_CONSENT_TEXT:
        raise InvalidInputError(f"the consent wording must be at most {MAX_CONSENT_TEXT} characters")
    if session.scalar(sa.select(MailingList.id).where(MailingList.name == name)) is not None:
        raise AlreadyExistsError(f"a list named {name!r} already exists")
    mailing_list = MailingList(name=name, title=title or name, double_opt_in=double_opt_in,
                               consent_text=consent_text)
    session.add(mailing_list)
    session.flush()
    return mailing_list


def get_list(session: Session, name: str) -> MailingList:
    """The list with this name; raises NotFoundError."""
    found = session.scalar(sa.select(MailingList).where(MailingList.name == name))
    if found is None:
        raise NotFoundError(f"no list named {name!r} (see `mailer list ls`)")
    return found


def summarize_lists(session: Session) -> list[ListSummary]:
    """Every list with its subscription counts by status, in one grouped query.

    An active subscription of a suppressed address counts as suppressed, not active: it gets no mail.
    """
    # a suppression keeps the normalized address until erasure, and erasure removes the subscriber
    suppressed = sa.exists().where(Suppression.email == Subscriber.email_normalized)
    counts: dict[tuple[int, SubscriptionStatus, bool], int] = {
        (list_id, status, bool(is_suppressed)): n
        for list_id, status, is_suppressed, n in session.execute(
            sa.select(Subscription.list_id, Subscription.status, suppressed, sa.func.count())
            .join(Subscriber, Subscriber.id == Subscription.subscriber_id)
            .group_by(Subscription.list_id, Subscription.status, suppressed)
        )
    }

    def count(list_id: int, status: SubscriptionStatus, is_suppressed: bool | None = None) -> int:
        flags = (False, True) if is_suppressed is None else (is_suppressed,)
        return sum(counts.get((list_id, status, flag), 0) for flag in flags)

    return [
        ListSummary(
            name=ml.name,
            title=ml.title,
            double_opt_in=ml.double_opt_in,
            active=count(ml.id, SubscriptionStatus.ACTIVE, False),
            unconfirmed=count(ml.id, SubscriptionStatus.UNCONFIRMED),
            unsubscribed=count(ml.id, SubscriptionStatus.UNSUBSCRIBED),
            suppressed=count(ml.id, SubscriptionStatus.ACTIVE, True),
        )
        for ml in session.scalars(sa.select(MailingList).order_by(MailingList.name))
    ]
