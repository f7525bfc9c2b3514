"""The double opt-in pages: `GET /confirm/<token>` shows a button, `POST` confirms."""

from __future__ import annotations

from flask import Blueprint, render_template

from mailer.errors import TokenError
from mailer.recipients.confirm import ConfirmOutcome, confirm_subscription, inspect_confirmation
from mailer.web.context import MAX_TOKEN_CHARS, client_ip, client_user_agent, web_context

confirm_pages = Blueprint("confirm", __name__)


def _invalid_link() -> tuple[str, int]:
    # one page for tampered, expired and unknown links: it reveals nothing about an address
    return render_template("web/confirm_invalid.html"), 400


@confirm_pages.route("/confirm/<path:token>", methods=["GET"], provide_automatic_options=False)
def confirm_page(token: str) -> tuple[str, int]:
    """One page, one button. Changes nothing: mail scanners fetch every link they see."""
    if len(token) > MAX_TOKEN_CHARS:
        return _invalid_link()
    context = web_context()
    try:
        with context.read_session() as session:
            result = inspect_confirmation(session, context.config, token)
    except TokenError:
        return _invalid_link()
    return render_template("web/confirm.html", result=result, outcomes=ConfirmOutcome), 200


@confirm_pages.route("/confirm/<path:token>", methods=["POST"], provide_automatic_options=False)
def confirm_post(token: str) -> tuple[str, int]:
    """Confirm the subscription, recording when, the IP and the user agent; repeating is harmless."""
    if len(token) > MAX_TOKEN_CHARS:
        return _invalid_link()
    context = web_context()
    try:
        with context.write_session() as session:
            result = confirm_subscription(
                session, context.config, token,
                ip=client_ip(), user_agent=client_user_agent(),
            )
    except TokenError:
        return _invalid_link()
    return render_template("web/confirm_done.html", result=result, outcomes=ConfirmOutcome), 200
