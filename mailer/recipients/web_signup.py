"""Sign-ups from the web: always double opt-in, with the consent record a form can prove."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import jinja2
import sqlalchemy as sa
from sqlalchemy.orm import Session

from mailer.audit import record_event
from mailer.config import Config
from mailer.consent import request_origin
from mailer.db import normalize_email
from mailer.errors import DeliveryError, InvalidInputError
from mailer.models import MailingList, Subscriber, Subscription, SubscriptionStatus, utcnow
from mailer.recipients.confirm import ConfirmationRequest, prepare_confirmation, send_confirmation
from mailer.recipients.lists import get_list
from mailer.recipients.subscribers import check_email, check_name, find_subscriber
from mailer.recipients.suppression import is_suppressed
from mailer.resources import template_search_path

log = logging.getLogger(__name__)

DEFAULT_CONSENT = (
    "Yes, email me {list_title} from {company}. I can unsubscribe at any time "
    "with the link in every message."
)
# what a page's address can hold; a longer Referer is cut, as the column is
MAX_PAGE = 2000
WEB_SOURCE = "web"


@dataclass(frozen=True)
class SignupForm:
    """What a sign-up form shows: the list and the consent words beside the button."""

    list_name: str
    list_title: str
    consent_text: str
    action: str  # the absolute URL the form posts to


@dataclass(frozen=True)
class WebSignup:
    """One sign-up as it came in, and where from (GDPR art. 7: the controller must prove consent)."""

    email: str
    name: str = ""
    ip: str | None = None
    user_agent: str | None = None
    page: str | None = None  # the Referer or Origin: the page the form was on


def consent_wording(config: Config, mailing_list: MailingList) -> str:
    """The list's own consent words, or the default ones naming the list and the company."""
    title = mailing_list.title or mailing_list.name
    return mailing_list.consent_text or DEFAULT_CONSENT.format(list_title=title, company=config.company.name)


def signup_form(session: Session, config: Config, list_name: str) -> SignupForm:
    """The form for a list; raises NotFoundError for an unknown list."""
    mailing_list = get_list(session, list_name)
    return SignupForm(
        list_name=mailing_list.name,
        list_title=mailing_list.title or mailing_list.name,
        consent_text=consent_wording(config, mailing_list),
        action=f"{config.unsubscribe.base_url.rstrip('/')}/subscribe/{mailing_list.name}",
    )


def embed_snippet(session: Session, config: Config, list_name: str) -> str:
    """The HTML form to paste into the company's site; it posts to `mailer serve`.

    Raises NotFoundError for an unknown list.
    """
    form = signup_form(session, config, list_name)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(template_search_path(config.web.templates_dir)),
        autoescape=True, undefined=jinja2.StrictUndefined,
    )
    return env.get_template("web/signup_form.html").render(form=form, embedded=True).strip() + "\n"


def check_signup(signup: WebSignup) -> WebSignup:
    """The sign-up with its address and name checked, before anything is looked up.

    The check depends on the text alone, so its answer says nothing about who is subscribed.
    Raises InvalidInputError for a bad address or name.
    """
    return replace(signup, email=check_email(signup.email), name=check_name(signup.name) if signup.name else "")


def sign_up(session: Session, config: Config, list_name: str, signup: WebSignup) -> ConfirmationRequest | None:
    """Record a web sign-up as unconfirmed and say which confirmation to send, if any.

    Whatever the list's own setting, the person is mailed nothing but the confirmation link
    until they follow it. A suppressed or erased address, or one that left this list, gets
    nothing; one already subscribed is left as it is (a stranger may have typed it). Callers
    show the same answer in every case. Raises InvalidInputError for a bad address or name and
    NotFoundError for an unknown list.
    """
    address = check_email(signup.email)
    name = check_name(signup.name) if signup.name else ""
    mailing_list = get_list(session, list_name)
    if is_suppressed(session, address):
        return None
    subscriber = find_subscriber(session, address)
    subscription = None
    if subscriber is None:
        subscriber = Subscriber(email=address, email_normalized=normalize_email(address), name=name, attributes={})
        session.add(subscriber)
        session.flush()
    else:
        subscription = session.scalar(sa.select(Subscription).where(
            Subscription.subscriber_id == subscriber.id, Subscription.list_id == mailing_list.id))
    if subscription is None:
        _add_unconfirmed(session, config, subscriber, mailing_list, signup)
    elif subscription.status is not SubscriptionStatus.UNCONFIRMED:
        return None
    try:
        return prepare_confirmation(session, config, subscriber.email, mailing_list.name)
    except InvalidInputError:
        # an address we can hold but not write to (a non-ASCII domain that IDNA refuses)
        return None


def _add_unconfirmed(
    session: Session, config: Config, subscriber: Subscriber, mailing_list: MailingList, signup: WebSignup
) -> None:
    ip, user_agent = request_origin(signup.ip, signup.user_agent)
    wording = consent_wording(config, mailing_list)
    session.add(Subscription(
        subscriber_id=subscriber.id, list_id=mailing_list.id, status=SubscriptionStatus.UNCONFIRMED,
        consent_at=utcnow(), consent_source=WEB_SOURCE, consent_ip=ip, consent_user_agent=user_agent,
        consent_page=signup.page[:MAX_PAGE] if signup.page else None, consent_text=wording,
    ))
    record_event(session, "signup", WEB_SOURCE, subject=subscriber.email, reason="web sign-up, awaiting confirmation",
                 detail={"list": mailing_list.name})
    session.flush()


def mail_confirmation(config: Config, request: ConfirmationRequest) -> bool:
    """Send the confirmation; a relay that fails is logged, and the person may simply sign up again."""
    try:
        send_confirmation(config, request)
    except DeliveryError as exc:
        log.warning("%s", exc)
        return False
    return True
