"""The database schema: lists, subscribers, consent, suppressions, campaigns, deliveries, audit."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

# kept where the composer reads it without loading the database; still known by this name here
from mailer.kinds import CampaignKind as CampaignKind

# alembic and the models agree on constraint names through this convention
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Stores naive UTC, hands back aware UTC, on SQLite and PostgreSQL alike."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: sa.Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use an aware UTC datetime")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(self, value: dt.datetime | None, dialect: sa.Dialect) -> dt.datetime | None:
        return None if value is None else value.replace(tzinfo=dt.UTC)


def _enum(cls: type[enum.Enum], name: str) -> sa.Enum:
    # stored as the member's value in a VARCHAR: readable, and new members need no ALTER TYPE
    return sa.Enum(cls, name=name, native_enum=False, create_constraint=False, length=20,
                   values_callable=lambda members: [m.value for m in members])


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dt.datetime: UTCDateTime(), dict[str, Any]: sa.JSON()}


class SubscriptionStatus(enum.StrEnum):
    """Where one subscriber stands on one list."""

    UNCONFIRMED = "unconfirmed"  # double opt-in list, confirmation link not yet used
    ACTIVE = "active"  # receives the list's campaigns
    UNSUBSCRIBED = "unsubscribed"  # opted out of this list


class SuppressionReason(enum.StrEnum):
    """Why an address must never be mailed again."""

    UNSUBSCRIBED = "unsubscribed"  # the recipient opted out (link, one-click, mailto)
    HARD_BOUNCE = "hard_bounce"  # the receiving server said the mailbox does not exist
    SOFT_BOUNCES = "soft_bounces"  # too many transient bounces from different campaigns
    COMPLAINT = "complaint"  # the recipient reported a message as spam (ARF)
    MANUAL = "manual"  # a marketer added it with `mailer suppress add`
    ERASED = "erased"  # GDPR erasure: only the hash of the address is kept


class CampaignStatus(enum.StrEnum):
    """The life of a campaign."""

    DRAFT = "draft"  # created, not yet sent or scheduled
    SCHEDULED = "scheduled"  # waits for send-due at scheduled_at
    SENDING = "sending"  # deliveries are being worked
    PAUSED = "paused"  # stopped by the marketer or by relay failures; resume goes on
    SENT = "sent"  # every delivery reached a final state
    CANCELLED = "cancelled"  # stopped for good; pending deliveries will not go out
    MISSED = "missed"  # its time passed by more than sending.max_lateness; not sent


class DeliveryState(enum.StrEnum):
    """The life of one message to one subscriber."""

    PENDING = "pending"  # waiting to be claimed
    SENDING = "sending"  # claimed by a sender, in flight
    SENT = "sent"  # the relay accepted it
    DEFERRED = "deferred"  # 4xx or timeout; retried at next_attempt_at
    FAILED = "failed"  # 5xx, or retries ran out
    SUPPRESSED = "suppressed"  # the address opted out before its turn
    IN_DOUBT = "in_doubt"  # the sender died while it was in flight; retry only on request
    CANCELLED = "cancelled"  # the campaign was cancelled before its turn


class MailingList(Base):
    __tablename__ = "mailing_lists"
    __table_args__ = {"sqlite_autoincrement": True}  # list ids are signed into links

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(100), unique=True)
    title: Mapped[str] = mapped_column(sa.String(200), default="")
    double_opt_in: Mapped[bool] = mapped_column(default=False)
    # the words a sign-up form shows beside its button; empty: the default wording (migration 0008)
    consent_text: Mapped[str] = mapped_column(sa.Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Subscriber(Base):
    __tablename__ = "subscribers"
    # ids are never reused, so a signed link of an erased person can never name a newcomer
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(primary_key=True)
    # the address as first given, and its normalized form that makes it one person
    email: Mapped[str] = mapped_column(sa.String(320))
    email_normalized: Mapped[str] = mapped_column(sa.String(320), unique=True)
    name: Mapped[str] = mapped_column(sa.String(200), default="")
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    subscriptions: Mapped[list[Subscription]] = relationship(
        back_populates="subscriber", cascade="all, delete-orphan"
    )


class Subscription(Base):
    __tablename__ = "subscriptions"
    __table_args__ = (sa.UniqueConstraint("subscriber_id", "list_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(sa.ForeignKey("subscribers.id", ondelete="CASCADE"))
    list_id: Mapped[int] = mapped_column(sa.ForeignKey("mailing_lists.id", ondelete="CASCADE"), index=True)
    status: Mapped[SubscriptionStatus] = mapped_column(_enum(SubscriptionStatus, "subscription_status"))
    # the consent record (GDPR art. 7): when, how, and from where it was given
    consent_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    consent_source: Mapped[str] = mapped_column(sa.String(200), default="")
    consent_ip: Mapped[str | None] = mapped_column(sa.String(45))
    consent_user_agent: Mapped[str | None] = mapped_column(sa.String(500))
    # a web sign-up's page (Referer or Origin) and the consent words it showed (migration 0008)
    consent_page: Mapped[str | None] = mapped_column(sa.String(2000))
    consent_text: Mapped[str | None] = mapped_column(sa.Text)
    confirmed_at: Mapped[dt.datetime | None]
    # where the double opt-in link was clicked from (migration 0005_privacy)
    confirmed_ip: Mapped[str | None] = mapped_column(sa.String(45))
    confirmed_user_agent: Mapped[str | None] = mapped_column(sa.String(500))
    unsubscribed_at: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    subscriber: Mapped[Subscriber] = relationship(back_populates="subscriptions")
    mailing_list: Mapped[MailingList] = relationship()


class Suppression(Base):
    __tablename__ = "suppressions"

    id: Mapped[int] = mapped_column(primary_key=True)
    # sha256 of the normalized address: survives erasure, so an erased address stays unmailable
    address_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    email: Mapped[str | None] = mapped_column(sa.String(320))  # NULL once erased
    reason: Mapped[SuppressionReason] = mapped_column(_enum(SuppressionReason, "suppression_reason"))
    source: Mapped[str] = mapped_column(sa.String(100), default="")
    ip: Mapped[str | None] = mapped_column(sa.String(45))
    user_agent: Mapped[str | None] = mapped_column(sa.String(500))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Campaign(Base):
    __tablename__ = "campaigns"
    __table_args__ = {"sqlite_autoincrement": True}  # campaign ids are signed into links

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[CampaignKind] = mapped_column(_enum(CampaignKind, "campaign_kind"),
                                               default=CampaignKind.CAMPAIGN)
    list_id: Mapped[int | None] = mapped_column(sa.ForeignKey("mailing_lists.id"), index=True)
    subject: Mapped[str] = mapped_column(sa.String(998))
    from_address: Mapped[str] = mapped_column(sa.String(320))
    template_name: Mapped[str] = mapped_column(sa.String(500), default="")
    # the template text itself, so a running campaign never changes under the marketer's feet
    html_template: Mapped[str] = mapped_column(sa.Text)
    text_template: Mapped[str | None] = mapped_column(sa.Text)
    status: Mapped[CampaignStatus] = mapped_column(_enum(CampaignStatus, "campaign_status"),
                                                   default=CampaignStatus.DRAFT)
    status_reason: Mapped[str] = mapped_column(sa.String(1000), default="")
    notice_reason: Mapped[str] = mapped_column(sa.String(1000), default="")
    scheduled_at: Mapped[dt.datetime | None]
    started_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]
    # policy blocks are weighed from here (the last resume; NULL: from the start), so a resumed
    # campaign is not paused again by the blocks that paused it (migration 0006_policy_blocks)
    policy_counted_from: Mapped[dt.datetime | None]
    # shown at /archive once sent (migration 0008_signup_archive)
    archived: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    mailing_list: Mapped[MailingList | None] = relationship()


# name, state, columns: the queue of each campaign in due order, and who holds what in flight
LIVE_INDEXES: tuple[tuple[str, DeliveryState, tuple[str, ...]], ...] = (
    ("ix_deliveries_pending", DeliveryState.PENDING, ("campaign_id", "id")),  # 0011_pending_by_id
    ("ix_deliveries_deferred", DeliveryState.DEFERRED, ("campaign_id", "next_attempt_at")),
    ("ix_deliveries_in_flight", DeliveryState.SENDING, ("claimed_by", "claimed_at")),
)


def live_state_sql(state: DeliveryState) -> str:
    """`state = 'pending'`: the condition of a live-work index, as SQL both databases accept."""
    return f"state = '{state.value}'"


def _live_index(name: str, state: DeliveryState, *columns: str) -> sa.Index:
    where = sa.text(live_state_sql(state))
    return sa.Index(name, *columns, postgresql_where=where, sqlite_where=where)


class Delivery(Base):
    __tablename__ = "deliveries"
    __table_args__ = (
        sa.UniqueConstraint("campaign_id", "subscriber_id"),
        # counts, retries and cancels by (campaign, state); claims use the live-work indexes below
        sa.Index("ix_deliveries_claim", "campaign_id", "state", "next_attempt_at"),
        # live work only (migration 0007_live_indexes): finished deliveries are not in these
        # indexes, so claims, heartbeats and abandoned-claim checks cost the same with ten
        # million of them as with none. Queries name the state as a literal (live_state) so
        # the planner can prove a partial index applies, whatever it does with parameters.
        *(_live_index(name, state, *columns) for name, state, columns in LIVE_INDEXES),
        {"sqlite_autoincrement": True},  # delivery ids are signed into bounce addresses
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(sa.ForeignKey("campaigns.id", ondelete="CASCADE"))
    # NULL once the subscriber is erased; the row stays for the campaign's counts
    subscriber_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("subscribers.id", ondelete="SET NULL"), index=True
    )
    state: Mapped[DeliveryState] = mapped_column(_enum(DeliveryState, "delivery_state"),
                                                 default=DeliveryState.PENDING)
    attempts: Mapped[int] = mapped_column(default=0)
    last_code: Mapped[int | None]
    last_response: Mapped[str] = mapped_column(sa.String(1000), default="")
    next_attempt_at: Mapped[dt.datetime | None]
    claimed_by: Mapped[str | None] = mapped_column(sa.String(200))
    claimed_at: Mapped[dt.datetime | None]
    sent_at: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


def live_state(state: DeliveryState) -> sa.ColumnElement[bool]:
    """Delivery.state = '<state>' with the value written into the SQL rather than bound: a
    prepared statement's generic plan cannot use a partial index for a bound value, and SQLite
    matches a partial index only on the same literal term."""
    return Delivery.state == sa.literal_column(f"'{state.value}'")


class AuditEvent(Base):
    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    action: Mapped[str] = mapped_column(sa.String(50))  # e.g. unsubscribe, erase, export, notice
    actor: Mapped[str] = mapped_column(sa.String(200))  # "cli:<user>" or "web"
    # the address while it may be kept, else its hash; never both after erasure
    subject: Mapped[str] = mapped_column(sa.String(320), default="")
    reason: Mapped[str] = mapped_column(sa.String(1000), default="")
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class BounceKind(enum.StrEnum):
    """What a receiving server or mailbox provider reported about one delivery."""

    HARD = "hard"  # the mailbox is gone (5.1.x, 5.2.1, 5.4.4): the delivery failed, the address is suppressed
    SOFT = "soft"  # a failure not about the mailbox (4.x.x, other 5.x.x): counted toward sending.soft_bounce_limit
    COMPLAINT = "complaint"  # the recipient reported the message as spam (ARF abuse report)
    POLICY = "policy"  # refused by policy (5.7.x, a blocklist): the delivery failed, the address is kept


class BounceEvent(Base):
    """One bounce or complaint, at most one of each kind per delivery (reprocessing adds nothing)."""

    __tablename__ = "bounce_events"
    __table_args__ = (
        sa.UniqueConstraint("delivery_id", "kind"),
        # a campaign's policy blocks are counted after every batch that had one
        sa.Index("ix_bounce_events_campaign_kind", "campaign_id", "kind"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[BounceKind] = mapped_column(_enum(BounceKind, "bounce_kind"))
    delivery_id: Mapped[int | None] = mapped_column(sa.ForeignKey("deliveries.id", ondelete="SET NULL"))
    campaign_id: Mapped[int | None] = mapped_column(sa.ForeignKey("campaigns.id", ondelete="SET NULL"))
    # the hash, not the address: the count of soft bounces outlives an erasure harmlessly
    address_hash: Mapped[str] = mapped_column(sa.String(64), index=True)
    status: Mapped[str] = mapped_column(sa.String(20), default="")  # enhanced status code, e.g. 5.1.1
    diagnostic: Mapped[str] = mapped_column(sa.String(1000), default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class InboundMessage(Base):
    """A message `inbound process` acted on, so reading the same mailbox again changes nothing."""

    __tablename__ = "inbound_messages"

    id: Mapped[int] = mapped_column(primary_key=True)
    # sha256 of the Message-ID, or of the whole message when it has none
    fingerprint: Mapped[str] = mapped_column(sa.String(64), unique=True)
    kind: Mapped[str] = mapped_column(sa.String(20))
    processed_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class IdentityPurpose(enum.StrEnum):
    """What an emailed identity link lets the person who follows it do."""

    SEE_DATA = "see_data"  # open /me/: see, download, correct and erase what is held
    CHANGE_ADDRESS = "change_address"  # sent to a new address: move the subscriber to it


class IdentityLink(Base):
    """A link mailed to prove a person controls an address: valid one hour, opened once."""

    __tablename__ = "identity_links"

    id: Mapped[int] = mapped_column(primary_key=True)
    # the random id the signed token carries; the token alone cannot be replayed once this row says so
    nonce: Mapped[str] = mapped_column(sa.String(64), unique=True)
    # an erasure deletes the subscriber, and with it every link and the new address it holds
    subscriber_id: Mapped[int] = mapped_column(sa.ForeignKey("subscribers.id", ondelete="CASCADE"), index=True)
    purpose: Mapped[IdentityPurpose] = mapped_column(_enum(IdentityPurpose, "identity_purpose"))
    new_email: Mapped[str | None] = mapped_column(sa.String(320))  # for CHANGE_ADDRESS only
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime]
    used_at: Mapped[dt.datetime | None]  # the first POST spent the link; it never opens again
    # sha256 of the secret the opened page's forms carry: the page's later actions need it, so
    # whoever only has the link (a forwarded mail, a scanner) can do nothing after the first opening
    session_hash: Mapped[str | None] = mapped_column(sa.String(64))
    closed_at: Mapped[dt.datetime | None]  # the page was left for good (erased, address changed)
class WebhookToken(Base):
    """A signed webhook's one-time token (Mailgun's), kept while its timestamp is fresh so a replay is refused."""

    __tablename__ = "webhook_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    provider: Mapped[str] = mapped_column(sa.String(20))
    # sha256 of the token: unique per provider, whoever posts it again
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    seen_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
