"""The one unsubscribe service behind the web page, one-click POSTs, mailto and privacy commands."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mailer.audit import cli_actor, record_event
from mailer.config import Config, UnsubscribeScope
from mailer.models import (
    MailingList,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    SuppressionReason,
    utcnow,
)
from mailer.suppression import suppress_address
from mailer.tokens import UnsubscribeClaim

# the widths of the columns these values land in
_MAX_IP = 45
_MAX_USER_AGENT = 500


class OptOutSource(enum.StrEnum):
    """How a recipient asked to stop receiving mail."""

    ONE_CLICK = "one-click"  # RFC 8058 POST sent by the mail client's unsubscribe button
    PAGE = "page"  # the button on the unsubscribe page the footer link opens
    MAILTO = "mailto"  # a mail to the unsubscribe address (`mailer inbound process`)


@dataclass(frozen=True)
class OptOutResult:
    """What one unsubscribe request did; `changed` is False when it was already honoured."""

    known: bool  # the token names a subscriber that still exists (False after erasure)
    changed: bool  # this request suppressed the address or left a list
    scope: UnsubscribeScope  # what the request removed the recipient from
    masked_email: str = ""  # for the confirmation page; "" when the subscriber is unknown
    lists_left: tuple[str, ...] = field(default=())  # titles of the lists this request left
    list_title: str = ""  # with scope "list": the title (or name) of the list left


def mask_email(email: str) -> str:
    """`j•••@example.com`: enough for the owner to recognise, too little to harvest."""
    local, _, domain = email.rpartition("@")
    if not local:
        return "•••"
    return f"{local[0]}•••@{domain}"


def unsubscribe(
    session: Session,
    config: Config,
    claim: UnsubscribeClaim,
    source: OptOutSource | str,
    ip: str | None = None,
    user_agent: str | None = None,
    actor: str | None = None,
) -> OptOutResult:
    """Honour an opt-out in the caller's transaction; repeating it changes nothing.

    With `unsubscribe.scope = "all"` the address is suppressed everywhere and every subscription
    ends; with `"list"` only the subscription to the token's list ends (a token without a list,
    or a list the person is no longer on, falls back to "all": a request to stop is never lost).
    An unknown subscriber id (erased, or never ours) is a no-op that reveals nothing. Never raises
    for a well-formed claim. `actor` is who the audit trail names; by default "web" for the
    page and one-click, "mailto" for mail, else the user at the terminal.
    """
    source = str(source)
    ip = ip[:_MAX_IP] if ip else None
    user_agent = user_agent[:_MAX_USER_AGENT] if user_agent else None
    subscriber = session.get(Subscriber, claim.subscriber_id)
    scope = config.unsubscribe.scope
    if subscriber is None:
        return OptOutResult(known=False, changed=False, scope=scope)

    subscriptions = _subscriptions_of(session, subscriber.id)
    list_title = ""
    if scope is UnsubscribeScope.LIST:
        on_list = [(s, title) for s, title in subscriptions if s.list_id == claim.list_id]
        if claim.list_id is None or not on_list:
            scope = UnsubscribeScope.ALL
        else:
            subscriptions = on_list
            list_title = on_list[0][1]

    now = utcnow()
    lists_left: list[str] = []
    for subscription, title in subscriptions:
        if subscription.status is not SubscriptionStatus.UNSUBSCRIBED:
            subscription.status = SubscriptionStatus.UNSUBSCRIBED
            subscription.unsubscribed_at = now
            lists_left.append(title)

    suppressed = False
    if scope is UnsubscribeScope.ALL:
        suppressed = _suppress_once(session, subscriber.email, source, ip, user_agent)

    changed = suppressed or bool(lists_left)
    if changed:
        record_event(
            session,
            "unsubscribe",
            actor=actor or _default_actor(source),
            subject=subscriber.email,
            reason=source,
            detail={
                "scope": scope.value,
                "lists": lists_left,
                "list_id": claim.list_id,
                "campaign_id": claim.campaign_id,
                "ip": ip,
                "user_agent": user_agent,
                "at": now.isoformat(),
            },
        )
    return OptOutResult(
        known=True,
        changed=changed,
        scope=scope,
        masked_email=mask_email(subscriber.email),
        lists_left=tuple(lists_left),
        list_title=list_title,
    )


def _default_actor(source: str) -> str:
    if source in (OptOutSource.ONE_CLICK, OptOutSource.PAGE):
        return "web"
    if source == OptOutSource.MAILTO:
        return "mailto"
    return cli_actor()


def _subscriptions_of(session: Session, subscriber_id: int) -> list[tuple[Subscription, str]]:
    """Each subscription with the list's title (its name when untitled), as recipients know it."""
    title = sa.func.coalesce(sa.func.nullif(MailingList.title, ""), MailingList.name)
    rows = session.execute(
        sa.select(Subscription, title)
        .join(MailingList, MailingList.id == Subscription.list_id)
        .where(Subscription.subscriber_id == subscriber_id)
        .order_by(MailingList.name)
    ).all()
    return [(row[0], row[1]) for row in rows]


def _suppress_once(
    session: Session, email: str, source: str, ip: str | None, user_agent: str | None
) -> bool:
    """Suppress the address; True when this call added the entry."""
    # two requests for the same address can race on PostgreSQL (SQLite serializes writers);
    # the loser's insert hits the unique hash and the winner's entry stands
    try:
        with session.begin_nested():
            _entry, created = suppress_address(
                session, email, SuppressionReason.UNSUBSCRIBED, source, ip, user_agent
            )
    except IntegrityError:
        return False
    return created
