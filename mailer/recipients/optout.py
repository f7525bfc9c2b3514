"""The one unsubscribe service behind the web page, one-click POSTs, mailto and privacy commands."""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass, field
from typing import NamedTuple, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session

from mailer.audit import cli_actor, insert_event
from mailer.config import Config, UnsubscribeScope
from mailer.consent import request_origin
from mailer.models import (
    MailingList,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    SuppressionReason,
    utcnow,
)
from mailer.recipients.suppression import AuditNote, suppress
from mailer.tokens import UnsubscribeClaim


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
    ip, user_agent = request_origin(ip, user_agent)
    scope = config.unsubscribe.scope
    # prepared column queries and one UPDATE, no ORM objects: this runs for every one-click POST
    rows = session.execute(_SELECT_SUBSCRIBER_LISTS, {"subscriber_id": claim.subscriber_id}).all()
    if not rows:
        return OptOutResult(known=False, changed=False, scope=scope)
    email: str = rows[0][0]
    held = [_SubscriptionRow(*row[1:]) for row in rows if row[1] is not None]
    scope, subscriptions = _in_scope(scope, claim, held)
    list_title = subscriptions[0].title if scope is UnsubscribeScope.LIST else ""

    now = utcnow()
    ending = [row for row in subscriptions if row.status is not SubscriptionStatus.UNSUBSCRIBED]
    ended = _end_subscriptions(session, [row.id for row in ending], now) if ending else set()
    lists_left = [row.title for row in ending if row.id in ended]

    audit = AuditNote(actor or _default_actor(source), source, action="unsubscribe", at=now, detail={
        "scope": scope.value,
        "lists": lists_left,
        "list_id": claim.list_id,
        "campaign_id": claim.campaign_id,
        "ip": ip,
        "user_agent": user_agent,
        "at": now.isoformat(),
    })
    suppressed = scope is UnsubscribeScope.ALL and suppress(
        session, email, SuppressionReason.UNSUBSCRIBED, source, audit, ip, user_agent)
    changed = suppressed or bool(lists_left)
    if changed and not suppressed:
        # leaving a list is no suppression, but the trail tells of it the same way
        insert_event(session, audit.action, audit.actor, subject=email, reason=audit.reason,
                     detail=audit.detail, at=now)
    return OptOutResult(
        known=True,
        changed=changed,
        scope=scope,
        masked_email=mask_email(email),
        lists_left=tuple(lists_left),
        list_title=list_title,
    )


def _in_scope(
    scope: UnsubscribeScope, claim: UnsubscribeClaim, subscriptions: list[_SubscriptionRow]
) -> tuple[UnsubscribeScope, list[_SubscriptionRow]]:
    """The scope a request is honoured in and the subscriptions it ends: "list" falls back to
    "all" for a token without a list or a list the person is not on."""
    if scope is UnsubscribeScope.ALL:
        return scope, subscriptions
    on_list = [row for row in subscriptions if row.list_id == claim.list_id]
    if claim.list_id is None or not on_list:
        return UnsubscribeScope.ALL, subscriptions
    return scope, on_list


def _default_actor(source: str) -> str:
    if source in (OptOutSource.ONE_CLICK, OptOutSource.PAGE):
        return "web"
    if source == OptOutSource.MAILTO:
        return "mailto"
    return cli_actor()


class _SubscriptionRow(NamedTuple):
    id: int
    list_id: int
    status: SubscriptionStatus
    title: str


# the subscriber's address and each subscription with its list's title (the name when untitled);
# built once, so a request pays for executing it, not for constructing it
_SELECT_SUBSCRIBER_LISTS = (
    sa.select(
        Subscriber.email,
        Subscription.id,
        Subscription.list_id,
        Subscription.status,
        sa.func.coalesce(sa.func.nullif(MailingList.title, ""), MailingList.name),
    )
    .outerjoin(Subscription, Subscription.subscriber_id == Subscriber.id)
    .outerjoin(MailingList, MailingList.id == Subscription.list_id)
    .where(Subscriber.id == sa.bindparam("subscriber_id"))
    .order_by(MailingList.name)
)
_SUBSCRIPTIONS = cast(sa.Table, Subscription.__table__)
# the status test is made again under the row lock: a click racing another on PostgreSQL waits
# for it, then finds the rows already ended and ends (and audits) nothing
_END_SUBSCRIPTIONS = (
    sa.update(_SUBSCRIPTIONS)
    .where(_SUBSCRIPTIONS.c.id.in_(sa.bindparam("ids", expanding=True)),
           _SUBSCRIPTIONS.c.status != SubscriptionStatus.UNSUBSCRIBED)
    .values(status=SubscriptionStatus.UNSUBSCRIBED, unsubscribed_at=sa.bindparam("now"))
    .returning(_SUBSCRIPTIONS.c.id)
)


def _end_subscriptions(session: Session, ids: list[int], now: dt.datetime) -> set[int]:
    """End these subscriptions; returns the ids this call ended (not those ended meanwhile)."""
    ended = set(session.scalars(_END_SUBSCRIPTIONS, {"ids": ids, "now": now}))
    # the UPDATE bypassed the ORM: subscriptions the caller already loaded must not go stale
    for instance in list(session.identity_map.values()):
        if isinstance(instance, Subscription) and instance.id in ids:
            session.expire(instance, ["status", "unsubscribed_at"])
    return ended
