"""The unsubscribe pages: `GET /u/<token>` shows a button, `POST` (RFC 8058 one-click or the button) opts out."""

from __future__ import annotations

import sqlalchemy as sa
from flask import Blueprint, render_template, request

from mailer.config import UnsubscribeScope
from mailer.errors import TokenError
from mailer.models import MailingList, Subscriber, Subscription
from mailer.recipients.optout import OptOutSource, mask_email, unsubscribe
from mailer.tokens import UnsubscribeClaim, read_unsubscribe_token
from mailer.web.context import MAX_TOKEN_CHARS, client_ip, client_user_agent, web_context

unsubscribe_pages = Blueprint("unsubscribe", __name__)


def _claim_from(token: str) -> UnsubscribeClaim | None:
    if len(token) > MAX_TOKEN_CHARS:
        return None
    try:
        return read_unsubscribe_token(web_context().config.require_secret_keys(), token)
    except TokenError:
        return None


def _invalid_link() -> tuple[str, int]:
    # the same page for forged, truncated, foreign-key and oversized tokens: nothing to learn from it
    return render_template("web/invalid.html"), 400


@unsubscribe_pages.route("/u/<path:token>", methods=["GET"], provide_automatic_options=False)
def unsubscribe_page(token: str) -> tuple[str, int]:
    """One page, one button. Changes nothing: mail scanners fetch every link they see."""
    claim = _claim_from(token)
    if claim is None:
        return _invalid_link()
    context = web_context()
    list_title = ""
    with context.read_session() as session:
        email = session.scalar(sa.select(Subscriber.email).where(Subscriber.id == claim.subscriber_id))
        if email and claim.list_id is not None and context.config.unsubscribe.scope is UnsubscribeScope.LIST:
            # ask about what the button will do: with scope "list", leave this list (when the
            # person is on it; otherwise the POST falls back to everything, and so does the page)
            list_title = session.scalar(
                sa.select(sa.func.coalesce(sa.func.nullif(MailingList.title, ""), MailingList.name))
                .join(Subscription, Subscription.list_id == MailingList.id)
                .where(Subscription.subscriber_id == claim.subscriber_id, MailingList.id == claim.list_id)
            ) or ""
    masked = mask_email(email) if email else ""
    return render_template("web/unsubscribe.html", masked_email=masked, list_title=list_title), 200


@unsubscribe_pages.route("/u/<path:token>", methods=["POST"], provide_automatic_options=False)
def unsubscribe_post(token: str) -> tuple[str, int]:
    """RFC 8058 one-click (`List-Unsubscribe=One-Click`) or the page's button: opt out, answer 200."""
    # reading the form first enforces MAX_CONTENT_LENGTH: an oversized body is a 413
    via_page = request.form.get("via") == "page"
    claim = _claim_from(token)
    if claim is None:
        return _invalid_link()
    context = web_context()
    with context.write_session() as session:
        result = unsubscribe(
            session,
            context.config,
            claim,
            OptOutSource.PAGE if via_page else OptOutSource.ONE_CLICK,
            ip=client_ip(),
            user_agent=client_user_agent(),
        )
    return render_template(
        "web/unsubscribed.html",
        masked_email=result.masked_email,
        list_only=result.scope is UnsubscribeScope.LIST,
        list_title=result.list_title,
    ), 200
