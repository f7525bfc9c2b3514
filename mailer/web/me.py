"""`/me/<token>`: a person's own data behind an emailed one-hour, single-use link: see it, download
it, correct it, move it to a new address, erase it."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, render_template, request
from sqlalchemy.orm import Session

from mailer.db import normalize_email
from mailer.errors import AlreadyExistsError, InvalidInputError, SuppressedError, TokenError
from mailer.models import IdentityLink, IdentityPurpose
from mailer.privacy import (
    export_subscriber,
    forget_subscriber,
    purge_erased_from_disk,
    update_subscriber,
)
from mailer.recipients.optout import mask_email
from mailer.recipients.preferences import (
    PendingMail,
    address_change_link,
    check_link_session,
    close_identity_link,
    find_identity_link,
    link_subscriber,
    open_identity_link,
)
from mailer.web.context import MAX_TOKEN_CHARS, web_context
from mailer.web.limits import limiter
from mailer.web.preferences import (
    LINK_LIMIT_PER_ADDRESS,
    LINK_LIMIT_PER_IP,
    MAX_ADDRESS_CHARS,
    request_origin,
    send_later,
)

me_pages = Blueprint("me", __name__)

# what a page needs in one answer: a template, its values, and the status
Page = tuple[str, int] | Response
# actions that work only with the secret the link's first opening handed out
_SESSION_ACTIONS = frozenset({"show", "download", "correct", "change_address", "erase_ask", "erase"})


def _invalid_link() -> tuple[str, int]:
    # one page for forged, expired, used and erased: it reveals nothing about an address
    return render_template("web/me_invalid.html"), 400


@me_pages.route("/me/<path:token>", methods=["GET"], provide_automatic_options=False)
def me_page(token: str) -> tuple[str, int]:
    """A button that opens the page (or confirms a new address). Changes nothing and spends
    nothing: mail scanners fetch every link they see."""
    if len(token) > MAX_TOKEN_CHARS:
        return _invalid_link()
    context = web_context()
    try:
        with context.read_session() as session:
            link = find_identity_link(session, context.config, token)
            if link.used_at is not None:
                return _invalid_link()
            email = link_subscriber(session, link).email
    except TokenError:
        return _invalid_link()
    if link.purpose is IdentityPurpose.CHANGE_ADDRESS:
        return render_template("web/me_address.html", old=mask_email(email),
                               new=mask_email(link.new_email or "")), 200
    return render_template("web/me_open.html", masked_email=mask_email(email)), 200


def _new_address_key() -> str:
    return "address:" + normalize_email(request.form.get("new_email", "")[:MAX_ADDRESS_CHARS])


def _not_an_address_change() -> bool:
    # each change request mails a stranger's address: counted with the identity links
    return request.form.get("action") != "change_address"


@me_pages.route("/me/<path:token>", methods=["POST"], provide_automatic_options=False)
@limiter.shared_limit(LINK_LIMIT_PER_IP, scope="identity-link-client", exempt_when=_not_an_address_change)
@limiter.shared_limit(LINK_LIMIT_PER_ADDRESS, scope="identity-link-address", key_func=_new_address_key,
                      exempt_when=_not_an_address_change)
def me_post(token: str) -> Page:
    """Every action on the page; the first (open, or confirm a new address) spends the link."""
    action = request.form.get("action", "")
    secret = request.form.get("session", "")
    if len(token) > MAX_TOKEN_CHARS:
        return _invalid_link()
    context = web_context()
    try:
        with context.write_session() as session:
            link = find_identity_link(session, context.config, token)
            if action in _SESSION_ACTIONS:
                check_link_session(link, secret)
                page = _act(session, link, action, secret)
            elif action == "open" and link.purpose is IdentityPurpose.SEE_DATA:
                page = _data_page(session, link, open_identity_link(session, link))
            elif action == "confirm_address" and link.purpose is IdentityPurpose.CHANGE_ADDRESS:
                page = _change_address(session, link)
            else:
                return _invalid_link()
    except TokenError:
        return _invalid_link()
    if isinstance(page, _Erased):
        purge_erased_from_disk(context.database)
        return render_template("web/me_erased.html"), 200
    if isinstance(page, _Mailed):
        send_later(context.config, page.mail)
        return page.page
    return page


class _Erased:
    """The person is gone: the page after the commit says so."""


class _Mailed:
    """A page that answers once a message is on its way."""

    def __init__(self, page: Page, mail: PendingMail) -> None:
        self.page, self.mail = page, mail


def _act(session: Session, link: IdentityLink, action: str, secret: str) -> Page | _Erased | _Mailed:
    email = link_subscriber(session, link).email
    if action == "download":
        data = export_subscriber(session, web_context().config, email, "web",
                                 "downloaded from the personal data page", origin=request_origin().detail())
        body = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
        return Response(body, mimetype="application/json",
                        headers={"Content-Disposition": 'attachment; filename="my-data.json"'})
    if action == "correct":
        return _correct(session, link, secret, email)
    if action == "change_address":
        return _request_address_change(session, link, secret)
    if action == "erase_ask":
        return render_template("web/me_erase.html", session_secret=secret), 200
    if action == "erase":
        forget_subscriber(session, email, "web", "erasure request from the personal data page")
        return _Erased()
    return _data_page(session, link, secret)


def _correct(session: Session, link: IdentityLink, secret: str, email: str) -> Page:
    subscriber = link_subscriber(session, link)
    attributes = {key: request.form.get(f"attr:{key}", str(value))
                  for key, value in subscriber.attributes.items()}
    try:
        result = update_subscriber(session, email, "web", name=request.form.get("name"),
                                   attributes=attributes, reason="corrected on the personal data page",
                                   origin=request_origin().detail())
    except InvalidInputError as exc:
        # refused before anything changed
        return _data_page(session, link, secret, error=str(exc), status=400)
    note = "Saved." if result.changed else "Nothing changed."
    return _data_page(session, link, secret, note=note)


def _request_address_change(session: Session, link: IdentityLink, secret: str) -> Page | _Mailed:
    subscriber = link_subscriber(session, link)
    try:
        mail = address_change_link(session, web_context().config, subscriber,
                                   request.form.get("new_email", "")[:MAX_ADDRESS_CHARS], request_origin())
    except InvalidInputError as exc:
        return _data_page(session, link, secret, error=str(exc), status=400)
    # the same words whether or not the address can be used: they must not tell whose it is
    note = ("If that address can receive our mail, a confirmation link is on its way to it. "
            "Nothing changes until it is followed.")
    page = _data_page(session, link, secret, note=note)
    return page if mail is None else _Mailed(page, mail)


def _change_address(session: Session, link: IdentityLink) -> tuple[str, int]:
    open_identity_link(session, link)  # a TokenError when it was used already
    close_identity_link(link)
    email = link_subscriber(session, link).email
    try:
        update_subscriber(session, email, "web", new_email=link.new_email,
                          reason="address change confirmed from the new address",
                          origin=request_origin().detail())
    except (SuppressedError, AlreadyExistsError):
        # taken or opted out since the request: say no more than that it cannot be done
        return render_template("web/me_address_done.html", changed=False), 409
    return render_template("web/me_address_done.html", changed=True,
                           new=mask_email(link.new_email or "")), 200


def _data_page(session: Session, link: IdentityLink, secret: str, *, note: str = "", error: str = "",
               status: int = 200) -> tuple[str, int]:
    email = link_subscriber(session, link).email
    data: dict[str, Any] = export_subscriber(session, web_context().config, email, "web",
                                             "shown on the personal data page",
                                             origin=request_origin().detail())
    return render_template(
        "web/me.html", data=data, session_secret=secret, note=note, error=error,
        expires_at=link.expires_at, everything=json.dumps(data, indent=2, ensure_ascii=False),
    ), status
