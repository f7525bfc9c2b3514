"""Mailing lists: create, find and count them."""

from __future__ import annotations

import re
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from mailer.errors import AlreadyExistsError, InvalidInputError, NotFoundError
from mailer.models import MailingList, Subscription, SubscriptionStatus

_LIST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass(frozen=True)
class ListSummary:
    name: str
    title: str
    double_opt_in: bool
    active: int
    unconfirmed: int
    unsubscribed: int


def create_list(session: Session, name: str, title: str = "", double_opt_in: bool = False) -> MailingList:
    """Create a list; raises AlreadyExistsError or InvalidInputError."""
    if not _LIST_NAME.match(name):
        raise InvalidInputError(
            f"invalid list name {name!r}: use up to 100 letters, digits, '.', '_' or '-'"
        )
    if any(ch in title for ch in "\r\n") or len(title) > 200:
        raise InvalidInputError("a list title must be one line of at most 200 characters")
    if session.scalar(sa.select(MailingList.id).where(MailingList.name == name)) is not None:
        raise AlreadyExistsError(f"a list named {name!r} already exists")
    mailing_list = MailingList(name=name, title=title or name, double_opt_in=double_opt_in)
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
    """Every list with its subscription counts by status, in one grouped query."""
    counts: dict[tuple[int, SubscriptionStatus], int] = {
        (list_id, status): n
        for list_id, status, n in session.execute(
            sa.select(Subscription.list_id, Subscription.status, sa.func.count())
            .group_by(Subscription.list_id, Subscription.status)
        )
    }
    return [
        ListSummary(
            name=ml.name,
            title=ml.title,
            double_opt_in=ml.double_opt_in,
            active=counts.get((ml.id, SubscriptionStatus.ACTIVE), 0),
            unconfirmed=counts.get((ml.id, SubscriptionStatus.UNCONFIRMED), 0),
            unsubscribed=counts.get((ml.id, SubscriptionStatus.UNSUBSCRIBED), 0),
        )
        for ml in session.scalars(sa.select(MailingList).order_by(MailingList.name))
    ]
