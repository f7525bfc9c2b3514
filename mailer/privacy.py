"""Data subject rights: export what is held (access, portability), rectify it, erase it."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from mailer.addresses import ANY_ADDRESS
from mailer.audit import record_event
from mailer.config import Config
from mailer.db import (
    Database,
    DiskPurge,
    address_hash,
    normalize_email,
    sqlite_path,
    truncate_sqlite_wal,
    vacuum_tables,
)
from mailer.errors import AlreadyExistsError, NotFoundError, SuppressedError
from mailer.models import (
    AuditEvent,
    BounceEvent,
    Campaign,
    Delivery,
    IdentityLink,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    Suppression,
    SuppressionReason,
    utcnow,
)
from mailer.recipients.lists import get_list
from mailer.recipients.subscribers import (
    check_attributes,
    check_email,
    check_name,
    find_subscriber,
    split_attribute_options,
    update_profile,
)
from mailer.recipients.suppression import find_suppression, is_suppressed, suppress
from mailer.recipients.web_signup import WEB_SOURCE

_IDENTIFYING_DETAIL = frozenset({"ip", "user_agent", "email", "name"})
# suppressions that describe the old mailbox, not the person's wish: a corrected address leaves them behind
_MAILBOX_REASONS = frozenset({SuppressionReason.HARD_BOUNCE, SuppressionReason.SOFT_BOUNCES})
# what an address looks like inside an SMTP reply, a bounce report or a reason someone typed
ERASED_MARK = "[erased]"  # what replaces an erased address inside kept text (SMTP replies, audit details)


def _iso(value: Any) -> str | None:
    return None if value is None else str(value.isoformat())


def _events_about(session: Session, key: str) -> list[AuditEvent]:
    # events name a person by the address as written; compare case-insensitively
    return list(session.scalars(
        sa.select(AuditEvent).where(sa.func.lower(AuditEvent.subject) == key).order_by(AuditEvent.at)
    ))


@dataclass
class HeldAboutPerson:
    """Every row that holds something about one person: what an export shows and an erasure
    removes. Both read it from find_held_about, so they can never disagree."""

    key: str  # the address as given, normalized
    subscriber: Subscriber | None
    suppression: Suppression | None
    events: list[AuditEvent]  # naming the person by address (their earlier ones moved here on correction)
    erased_events: list[AuditEvent]  # naming the person by hash, after an earlier erasure
    earlier_hashes: set[str]  # hashes of addresses the person had before a correction
    earlier_suppressions: list[Suppression]  # an earlier address's own opt-out
    deliveries: list[Delivery]
    bounces: list[BounceEvent]  # of the address, an earlier address, or one of the deliveries

    @property
    def digest(self) -> str:
        return address_hash(self.key)


def find_held_about(session: Session, email: str) -> HeldAboutPerson:
    """Everything held about the person at `email`, earlier addresses included.

    Raises NotFoundError when nothing at all is held about the address.
    """
    key = normalize_email(email)
    digest = address_hash(key)
    subscriber = find_subscriber(session, key)
    suppression = find_suppression(session, key)
    if subscriber is None and suppression is None:
        raise NotFoundError(f"nothing is held about {email.strip()!r}")
    events = _events_about(session, key)
    erased_events = list(session.scalars(
        sa.select(AuditEvent).where(AuditEvent.subject == digest).order_by(AuditEvent.at, AuditEvent.id)))
    # a correction records the hash of the address it replaced: the bounces of that mailbox are theirs
    earlier_hashes = {
        earlier for e in [*events, *erased_events] if e.action == "rectify"
        and isinstance(earlier := e.detail.get("previous_address_hash"), str)
    } - {digest}
    earlier_suppressions = list(session.scalars(
        sa.select(Suppression).where(Suppression.address_hash.in_(earlier_hashes)).order_by(Suppression.id)))
    deliveries: list[Delivery] = []
    theirs: sa.ColumnElement[bool] = BounceEvent.address_hash.in_({digest} | earlier_hashes)
    if subscriber is not None:
        deliveries = list(session.scalars(
            sa.select(Delivery).where(Delivery.subscriber_id == subscriber.id)
            .order_by(Delivery.created_at, Delivery.id)))
        own_deliveries = sa.select(Delivery.id).where(Delivery.subscriber_id == subscriber.id)
        theirs = sa.or_(theirs, BounceEvent.delivery_id.in_(own_deliveries))
    bounces = list(session.scalars(
        sa.select(BounceEvent).where(theirs).order_by(BounceEvent.created_at, BounceEvent.id)))
    return HeldAboutPerson(key, subscriber, suppression, events, erased_events, earlier_hashes,
                           earlier_suppressions, deliveries, bounces)


def _suppression_data(suppression: Suppression) -> dict[str, Any]:
    return {
        "reason": suppression.reason.value,
        "source": suppression.source,
        "at": _iso(suppression.created_at),
        "ip": suppression.ip,
        "user_agent": suppression.user_agent,
    }


def _subscriber_data(session: Session, subscriber: Subscriber, held: HeldAboutPerson) -> dict[str, Any]:
    """The profile, each subscription with its consent, and each delivery, as an export shows them."""
    profile = {
        "email": subscriber.email,
        "name": subscriber.name,
        "attributes": dict(subscriber.attributes),
        "created_at": _iso(subscriber.created_at),
        "updated_at": _iso(subscriber.updated_at),
    }
    subscriptions = [
        {
            "list": sub.mailing_list.name,
            "list_title": sub.mailing_list.title,
            "status": sub.status.value,
            "consent": {
                "at": _iso(sub.consent_at),
                "source": sub.consent_source,
                "ip": sub.consent_ip,
                "user_agent": sub.consent_user_agent,
                # a web sign-up's form: the page it was on and the words it showed
                "page": sub.consent_page,
                "wording": sub.consent_text,
            },
            # only a double opt-in list, or a sign-up from the web, has a confirmation step to report
            "confirmation": None if sub.confirmed_at is None or not _was_confirmed(sub) else {
                "at": _iso(sub.confirmed_at),
                "ip": sub.confirmed_ip,
                "user_agent": sub.confirmed_user_agent,
            },
            "unsubscribed_at": _iso(sub.unsubscribed_at),
        }
        for sub in sorted(subscriber.subscriptions, key=lambda s: s.mailing_list.name)
    ]
    deliveries = [
        {
            "campaign_id": campaign.id,
            "kind": campaign.kind.value,
            "subject": campaign.subject,
            "state": delivery.state.value,
            "sent_at": _iso(delivery.sent_at),
            "queued_at": _iso(delivery.created_at),
            "attempts": delivery.attempts,
            # what the receiving server last said about the mailbox
            "smtp_code": delivery.last_code,
            "smtp_reply": delivery.last_response,
        }
        for delivery in held.deliveries
        if (campaign := session.get(Campaign, delivery.campaign_id)) is not None
    ]
    return {"profile": profile, "subscriptions": subscriptions, "deliveries": deliveries}


def export_subscriber(
    session: Session, config: Config, email: str, actor: str, reason: str = "",
    origin: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything held about one address, as JSON-ready data; the export is audit-logged
    (`origin`: where a web request came from, for the event's detail).

    Raises NotFoundError when nothing at all is held about the address.
    """
    held = find_held_about(session, email)
    key, subscriber, suppression = held.key, held.subscriber, held.suppression
    data: dict[str, Any] = {
        "exported_at": utcnow().isoformat(),
        "controller": {
            "name": config.company.name,
            "postal_address": config.company.postal_address,
            "privacy_policy": config.company.privacy_url,
        },
        "email": subscriber.email if subscriber else key,
        "profile": None,
        "subscriptions": [],
        "deliveries": [],
        "suppression": None,
        "bounces": [],
        "audit_events": [],
    }
    if subscriber is not None:
        data.update(_subscriber_data(session, subscriber, held))
    if suppression is not None:
        data["suppression"] = _suppression_data(suppression)
    # an address the person had before a correction may have opted out on its own
    data["earlier_address_suppressions"] = [_suppression_data(s) for s in held.earlier_suppressions]
    data["bounces"] = [
        {"kind": b.kind.value, "campaign_id": b.campaign_id, "status": b.status,
         "diagnostic": b.diagnostic, "at": _iso(b.created_at)}
        for b in held.bounces
    ]
    # an erasure leaves the person's events under the hash of the address; they are still theirs
    events = sorted([*held.events, *held.erased_events], key=lambda e: (e.at, e.id))
    data["audit_events"] = [
        # the detail is where a click came from (IP, user agent) when no other row records it
        {"at": _iso(e.at), "action": e.action, "actor": e.actor, "reason": e.reason, "detail": e.detail}
        for e in events
    ]
    # an erased address is named by its hash only, even when someone types it in again
    named = subscriber.email if subscriber else (suppression.email if suppression else None)
    record_event(session, "export", actor, subject=named or held.digest,
                 reason=reason or "access and portability request (GDPR art. 15, 20)", detail=dict(origin or {}))
    return data


@dataclass
class UpdateResult:
    """What a rectification changed."""

    email: str
    changed: list[str] = field(default_factory=list)
    suppression_carried: bool = False  # the old address had opted out; the new one is suppressed too


def update_subscriber(
    session: Session,
    email: str,
    actor: str,
    new_email: str | None = None,
    name: str | None = None,
    attributes: Mapping[str, str] | None = None,
    reason: str = "",
    origin: Mapping[str, Any] | None = None,
) -> UpdateResult:
    """Rectify a subscriber's address, name or attributes; an empty attribute value removes it.
    `origin` (where a web request came from) goes into the audit event's detail.

    Raises NotFoundError for an unknown address, InvalidInputError for a malformed value
    (line breaks included), SuppressedError when the new address has opted out or was
    erased, and AlreadyExistsError when it belongs to another subscriber.
    """
    subscriber = find_subscriber(session, email)
    if subscriber is None:
        raise NotFoundError(f"no subscriber with address {email.strip()!r}")
    result = UpdateResult(email=subscriber.email)
    old_key = subscriber.email_normalized
    carried = _change_address(session, subscriber, new_email, result) if new_email is not None else None
    clean_name = check_name(name) if name is not None else None
    attributes = attributes or {}
    # an empty value removes the attribute
    to_set = check_attributes({k: v for k, v in attributes.items() if v != ""})
    removing = [key.strip() for key, value in attributes.items() if value == ""]
    result.changed += update_profile(subscriber, clean_name, to_set, removing)
    if result.changed:
        record_event(
            session, "rectify", actor, subject=subscriber.email,
            reason=reason or "rectification request (GDPR art. 16)",
            detail={**(origin or {}), "changed": result.changed,
                    **({"previous_address_hash": address_hash(old_key)}
                       if "email" in result.changed and old_key != subscriber.email_normalized else {}),
                    # the new address was suppressed for the same reason as the old one
                    **({"suppressed": carried.value} if carried is not None else {})},
        )
    session.flush()
    return result


def _change_address(
    session: Session, subscriber: Subscriber, new_email: str, result: UpdateResult
) -> SuppressionReason | None:
    """Give the subscriber a corrected address; the suppression reason carried to it, if any."""
    old_key = subscriber.email_normalized
    address = check_email(new_email)
    new_key = normalize_email(address)
    if new_key != old_key:
        if is_suppressed(session, new_key):
            raise SuppressedError(f"{address} is on the suppression list; it cannot become a subscriber's address")
        if find_subscriber(session, new_key) is not None:
            raise AlreadyExistsError(f"{address} is already another subscriber's address")
    if address == subscriber.email:
        return None
    old_suppression = find_suppression(session, old_key)
    subscriber.email = address
    subscriber.email_normalized = new_key
    result.email = address
    result.changed.append("email")
    if new_key == old_key:
        return None
    # the same person: their earlier events follow them, so an erasure finds them all
    for event in _events_about(session, old_key):
        event.subject = address
    if old_suppression is None or old_suppression.reason in _MAILBOX_REASONS:
        return None
    # an objection to mail is the person's, not the mailbox's; a new address must not make
    # someone who opted out mailable again (the rectify event tells of it)
    suppress(session, new_key, old_suppression.reason, "rectified from a suppressed address", None)
    result.suppression_carried = True
    return old_suppression.reason


def parse_attribute_changes(pairs: tuple[str, ...] | list[str]) -> dict[str, str]:
    """--attr KEY=VALUE options for an update; `KEY=` (empty) means remove the attribute."""
    result = split_attribute_options(pairs, usage="KEY=VALUE (or KEY= to remove it)")
    check_attributes({k: v for k, v in result.items() if v != ""})
    return result


@dataclass
class ErasureReport:
    """What an erasure removed, for the person at the terminal and the audit trail."""

    address_hash: str
    profile: bool = False
    attributes: int = 0
    subscriptions: list[str] = field(default_factory=list)
    deliveries: int = 0
    suppression: str = ""  # "kept as hash" or "added as hash"
    audit_events: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "address_hash": self.address_hash,
            "profile": self.profile,
            "attributes": self.attributes,
            "subscriptions": self.subscriptions,
            "deliveries_detached": self.deliveries,
            "suppression": self.suppression,
            "audit_events_pseudonymized": self.audit_events,
        }


# a name part shorter than this ("Li", "de") is too likely to be an ordinary word in a server's reply
_MIN_NAME_PART = 3


def _identifying_text(held: HeldAboutPerson) -> re.Pattern[str]:
    """What names the person inside kept text: the address in any case, any other address
    (one they had before a correction), and the display name and its longer parts as whole words."""
    # at one position the address wins over a name part: "ANA@x.org" goes whole, not as "[erased]@x.org"
    alternatives = [re.escape(held.key), ANY_ADDRESS.pattern]
    if held.subscriber is not None:
        name = " ".join(held.subscriber.name.split())
        parts = {name, *name.split(" ")} if name else set()
        alternatives += [r"(?<!\w)" + r"\s+".join(map(re.escape, part.split(" "))) + r"(?!\w)"
                         for part in sorted(parts, key=len, reverse=True)
                         if part == name or len(part) >= _MIN_NAME_PART]
    return re.compile("|".join(alternatives), re.IGNORECASE)


def _scrub(value: Any, needles: re.Pattern[str]) -> Any:
    """The value with every case-insensitive occurrence of the person's address and name
    replaced, and any other address in it too: text about an erased person may quote an
    address they had before a correction, which is kept nowhere else to search for."""
    if isinstance(value, str):
        return needles.sub(ERASED_MARK, value)
    if isinstance(value, dict):
        return {k: _scrub(v, needles) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v, needles) for v in value]
    return value


def forget_subscriber(session: Session, email: str, actor: str, reason: str = "") -> ErasureReport:
    """Erase a person: profile, attributes, consent records, subscriptions, the address in
    deliveries and the audit trail; keep only a hashed suppression so it is never mailed again.

    Raises NotFoundError when nothing is held about the address.
    """
    # read before the deliveries are detached from the person below
    held = find_held_about(session, email)
    digest, subscriber, suppression = held.digest, held.subscriber, held.suppression
    report = ErasureReport(address_hash=digest)
    needles = _identifying_text(held)
    if subscriber is not None:
        report.profile = True
        report.attributes = len(subscriber.attributes)
        report.subscriptions = sorted(sub.mailing_list.name for sub in subscriber.subscriptions)
        for delivery in held.deliveries:
            # an SMTP reply often quotes the recipient ("550 <ana@...>: no such user")
            delivery.last_response = _scrub(delivery.last_response, needles)
            delivery.subscriber_id = None
        report.deliveries = len(held.deliveries)
        session.flush()
        session.delete(subscriber)  # its subscriptions, with their consent records, go with it
    if suppression is None:
        # the erase event below tells of it
        suppress(session, held.key, SuppressionReason.ERASED, "erasure", None)
        report.suppression = "added as hash"
    else:
        suppression.email = None
        suppression.ip = None
        suppression.user_agent = None
        suppression.reason = SuppressionReason.ERASED
        suppression.source = "erasure"
        report.suppression = "kept as hash"
    # bounce events are kept by hash for the soft-bounce count; their server replies quote the address
    for bounce in held.bounces:
        bounce.diagnostic = _scrub(bounce.diagnostic, needles)
    for earlier in held.earlier_suppressions:
        # the person's earlier address opted out: keep the opt-out, not who or where from
        earlier.email = None
        earlier.ip = None
        earlier.user_agent = None
    _scrub_campaign_reasons(session, needles)
    for event in held.events:
        event.subject = digest
        event.reason = _scrub(event.reason, needles)
        # where a click came from identifies a person as much as the address did
        event.detail = {k: (None if k in _IDENTIFYING_DETAIL else v)
                        for k, v in _scrub(dict(event.detail), needles).items()}
        report.audit_events += 1
    record_event(session, "erase", actor, subject=digest,
                 reason=reason or "erasure request (GDPR art. 17)", detail=report.as_dict())
    session.flush()
    return report


def _scrub_campaign_reasons(session: Session, needles: re.Pattern[str]) -> None:
    """A campaign the mailer paused keeps the server reply that made it stop, in its status and
    its audit event, and such a reply may quote a recipient by address or name."""
    for campaign in session.scalars(sa.select(Campaign).where(Campaign.status_reason != "")):
        campaign.status_reason = _scrub(campaign.status_reason, needles)
    events = sa.select(AuditEvent).where(AuditEvent.action.startswith("campaign_"), AuditEvent.reason != "")
    for event in session.scalars(events):
        event.reason = _scrub(event.reason, needles)


# every table an erasure deletes from or rewrites (identity links go with their subscriber)
_ERASURE_TABLES = (Subscriber, Subscription, Suppression, Delivery, BounceEvent, AuditEvent, IdentityLink)


def purge_erased_from_disk(database: Database) -> DiskPurge:
    """After an erasure has committed, take the old copies of the rows off the disk.

    SQLite overwrites deleted content (secure_delete, set on every connection) but the WAL
    still holds earlier copies of the pages until a checkpoint truncates it; PostgreSQL keeps
    deleted rows as dead tuples until VACUUM prunes them. Reports, never raises, when it
    cannot finish: the erasure itself stands.
    """
    if database.is_sqlite:
        path = sqlite_path(database.url)
        result = truncate_sqlite_wal(database.engine)
        if result.done or path is None:
            return result
        return DiskPurge(False, f"{result.reason}, so old copies of the erased rows stay in {path}-wal "
                                "until every process using the database has closed it")
    return vacuum_tables(database.engine, [model.__table__ for model in _ERASURE_TABLES])  # type: ignore[misc]


def opted_out_member_ids(session: Session, list_name: str) -> set[int]:
    """Members of a list who left it or whose address is suppressed: never listed for export.

    COMPLIANCE 24: a list of members is what gets exported to another mailer, so opted-out
    addresses stay out of it; `subscriber show` still answers for one person.
    """
    mailing_list = get_list(session, list_name)
    members = sa.select(Subscription.subscriber_id).where(Subscription.list_id == mailing_list.id)
    left = members.where(Subscription.status == SubscriptionStatus.UNSUBSCRIBED)
    # a suppression keeps the address until erasure, and an erased person has no row to list
    suppressed = (
        sa.select(Subscriber.id)
        .join(Suppression, Suppression.email == Subscriber.email_normalized)
        .where(Subscriber.id.in_(members))
    )
    return set(session.scalars(left)) | set(session.scalars(suppressed))


def _was_confirmed(subscription: Subscription) -> bool:
    return subscription.mailing_list.double_opt_in or subscription.consent_source == WEB_SOURCE
