"""The preference centre: `/p/<token>` from the footer (lists, leave everything, a link to one's data)
and `/preferences`, which mails that link to an address typed in."""

from __future__ import annotations

import logging
import threading

import sqlalchemy as sa
from flask import Blueprint, render_template, request

from mailer.config import Config
from mailer.db import normalize_email
from mailer.errors import DeliveryError, InvalidInputError, MailerError, TokenError
from mailer.recipients.preferences import (
    ChoiceResult,
    Origin,
    PendingMail,
    PreferenceView,
    identity_link_by_address,
    identity_link_for,
    leave_everything,
    preference_view,
    save_list_choice,
    send_confirmations,
    send_pending,
    subscriber_from_token,
)
from mailer.recipients.subscribers import check_email
from mailer.web.context import (
    MAX_TOKEN_CHARS,
    WebContext,
    client_ip,
    client_user_agent,
    web_context,
)
from mailer.web.limits import limiter

preference_pages = Blueprint("preferences", __name__)
log = logging.getLogger(__name__)

# identity links cost a message each: bounded per client and per address they go to
LINK_LIMIT_PER_IP = "10 per hour"
LINK_LIMIT_PER_ADDRESS = "3 per hour"
# saves that choose lists, per footer link: each list chosen again mails a confirmation, and a
# forwarded footer must not become a way to flood its owner's inbox
CHOICE_LIMIT_PER_LINK = "10 per hour"
# the threads that answer `/preferences` by mail, beside the page (tests wait for them)
ASK_THREAD = "identity-link-by-address"
# an address is at most 254 octets; a longer field is not worth normalizing
MAX_ADDRESS_CHARS = 320


def request_origin() -> Origin:
    """Who asked: the client's address and user agent, as the records of a change keep them."""
    return Origin(client_ip(), client_user_agent())


def _invalid_link() -> tuple[str, int]:
    # the unsubscribe page's answer to a bad link: nothing to learn from it, and other ways out
    return render_template("web/invalid.html"), 400


def _address_key() -> str:
    """The rate-limit key of the address a form names (the subscriber's for a footer link)."""
    typed = request.form.get("email", "")[:MAX_ADDRESS_CHARS]
    return "address:" + (normalize_email(typed) if typed else request.path)


def _link_key() -> str:
    return "link:" + request.path


def _not_a_choice_of_lists() -> bool:
    # leaving lists mails nobody; only a save that chooses some can mail a confirmation
    return request.form.get("action") != "save" or not request.form.getlist("list")


def _not_a_link_request() -> bool:
    # only "email me a link" sends mail; saving a choice or leaving is never held back
    return request.form.get("action") != "link"


@preference_pages.route("/p/<path:token>", methods=["GET"], provide_automatic_options=False)
def preferences_page(token: str) -> tuple[str, int]:
    """The lists and the buttons. Changes nothing: mail scanners fetch every link they see."""
    if len(token) > MAX_TOKEN_CHARS:
        return _invalid_link()
    context = web_context()
    try:
        with context.read_session() as session:
            view = preference_view(session, subscriber_from_token(session, context.config, token))
    except TokenError:
        return _invalid_link()
    return render_template("web/preferences.html", view=view), 200


@preference_pages.route("/p/<path:token>", methods=["POST"], provide_automatic_options=False)
@limiter.shared_limit(LINK_LIMIT_PER_IP, scope="identity-link-client", exempt_when=_not_a_link_request)
@limiter.shared_limit(LINK_LIMIT_PER_ADDRESS, scope="identity-link-address", key_func=_address_key,
                      exempt_when=_not_a_link_request)
@limiter.limit(CHOICE_LIMIT_PER_LINK, key_func=_link_key, exempt_when=_not_a_choice_of_lists)
def preferences_post(token: str) -> tuple[str, int]:
    """Save the list choice, leave everything, or mail a link to the data page.

    The token is the capability, as on the unsubscribe page: no cookie, so no cross-site
    request can ride on one.
    """
    action = request.form.get("action", "")
    # ASCII only: "²" passes isdigit() and int() refuses it
    chosen = {int(v) for v in request.form.getlist("list") if v.isascii() and v.isdigit() and len(v) < 10}
    if len(token) > MAX_TOKEN_CHARS or action not in ("save", "leave", "link"):
        return _invalid_link()
    context = web_context()
    try:
        with context.write_session() as session:
            subscriber = subscriber_from_token(session, context.config, token)
            if action == "leave":
                result = leave_everything(session, context.config, subscriber, request_origin())
                return render_template("web/unsubscribed.html", masked_email=result.masked_email,
                                       list_only=False, list_title=""), 200
            if action == "link":
                mail = identity_link_for(session, context.config, subscriber, request_origin())
            else:
                choice = save_list_choice(session, context.config, subscriber, chosen, request_origin())
                view = preference_view(session, subscriber)
    except TokenError:
        return _invalid_link()
    if action == "link":
        sent = _send_now(context.config, mail)
        return render_template("web/preferences_link_sent.html", sent=sent), 200 if sent else 503
    return _saved_page(context.config, choice, view)


def _saved_page(config: Config, choice: ChoiceResult, view: PreferenceView) -> tuple[str, int]:
    try:
        send_confirmations(config, choice)
        mailed = True
    except DeliveryError:
        # the relay's reply may quote the address, and a log is not where an erasure reaches
        log.warning("a list confirmation from the preference centre could not be sent")
        mailed = False
    return render_template("web/preferences.html", view=view, choice=choice, mailed=mailed), 200


def _send_now(config: Config, mail: PendingMail) -> bool:
    try:
        send_pending(config, mail)
    except DeliveryError:
        log.warning("an identity link or address confirmation could not be sent")
        return False
    return True


def send_later(config: Config, mail: PendingMail) -> None:
    """Send from a thread of its own; a failure is logged."""
    # the answer must not wait for the relay: how long it takes would tell a known address
    # from an unknown one
    threading.Thread(target=_send_now, args=(config, mail), name="identity-link", daemon=True).start()


@preference_pages.route("/preferences", methods=["GET"], provide_automatic_options=False)
def ask_page() -> tuple[str, int]:
    return render_template("web/preferences_ask.html"), 200


@preference_pages.route("/preferences", methods=["POST"], provide_automatic_options=False)
@limiter.shared_limit(LINK_LIMIT_PER_IP, scope="identity-link-client")
@limiter.shared_limit(LINK_LIMIT_PER_ADDRESS, scope="identity-link-address", key_func=_address_key)
def ask_post() -> tuple[str, int]:
    """Mail a link to the data page when the address is known; the same answer either way."""
    typed = request.form.get("email", "")[:MAX_ADDRESS_CHARS]
    try:
        address = check_email(typed)
    except InvalidInputError:
        # a typing mistake is the person's own to see; it says nothing about anyone's address
        return render_template("web/preferences_ask.html", error="Please enter a valid email address.",
                               typed=typed), 400
    # looked up, recorded and mailed beside the answer: the writes and the message a known
    # address costs must not make its answer slower than an unknown one's
    threading.Thread(target=_link_by_address, args=(web_context(), address, request_origin()),
                     name=ASK_THREAD).start()
    return render_template("web/preferences_asked.html"), 200


def _link_by_address(context: WebContext, address: str, origin: Origin) -> None:
    try:
        with context.write_session() as session:
            mail = identity_link_by_address(session, context.config, address, origin)
    except (MailerError, sa.exc.SQLAlchemyError) as exc:
        # the address stays out of the log: a log is not where an erasure reaches
        log.warning("an identity link asked for by address could not be prepared (%s)", type(exc).__name__)
        return
    if mail is not None:
        _send_now(context.config, mail)
