"""POST /webhooks/mailgun: Mailgun's `failed` and `complained` events, HMAC-signed, fresh and used once."""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

from flask import Blueprint, Response, abort
from sqlalchemy.orm import Session

from mailer.config import WebhooksConfig
from mailer.inbound.events import EventKind, ProviderEvent, Verdict, remember_token
from mailer.verp import PROVIDER_REFERENCE_NAME
from mailer.web.context import web_context
from mailer.web.webhooks.common import (
    WebhookRefused,
    act_on_events,
    as_object,
    as_text,
    raw_body,
    read_json_object,
    refusal,
)

mailgun_pages = Blueprint("mailgun", __name__)

# a signature older (or further ahead) than this is refused: Mailgun signs each post when it sends it
MAX_SIGNATURE_AGE = 300


def check_signature(hooks: WebhooksConfig, signature: dict[str, Any], now: float | None = None) -> str:
    """The token of a valid, fresh signature; raises WebhookRefused (401 missing, 403 wrong or stale)."""
    timestamp, token = as_text(signature.get("timestamp"), 20), as_text(signature.get("token"), 200)
    given = as_text(signature.get("signature"), 200)
    if not (timestamp and token and given):
        raise WebhookRefused(401, "no Mailgun signature")
    expected = hmac.new(hooks.mailgun_signing_key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, given.lower()):
        raise WebhookRefused(403, "bad signature")
    try:
        age = (time.time() if now is None else now) - float(timestamp)
    except ValueError:
        raise WebhookRefused(403, "bad timestamp") from None
    if abs(age) > MAX_SIGNATURE_AGE:
        raise WebhookRefused(403, f"signature older than {MAX_SIGNATURE_AGE // 60} minutes")
    return token


def mailgun_event(data: dict[str, Any]) -> ProviderEvent:
    """One Mailgun event-data object as an event."""
    name, severity, reason = as_text(data.get("event")), as_text(data.get("severity")), as_text(data.get("reason"))
    status = as_object(data.get("delivery-status"))
    kind, verdict = _kind_of(name, severity, reason)
    code = as_text(status.get("code"), 10)
    words = " ".join(part for part in (as_text(status.get("message")), as_text(status.get("description"))) if part)
    return ProviderEvent(
        provider="mailgun",
        event_id=as_text(data.get("id"), 200),
        kind=kind,
        recipient=as_text(data.get("recipient"), 320),
        reference=as_text(as_object(data.get("user-variables")).get(PROVIDER_REFERENCE_NAME), 100),
        message_id=as_text(as_object(as_object(data.get("message")).get("headers")).get("message-id"), 300),
        verdict=verdict,
        status=as_text(status.get("enhanced-code"), 20),
        diagnostic=f"{code} {words}".strip(),
        note=f"a {name or 'nameless'} event: nothing to do",
        # Mailgun retries a temporary failure by itself: like a delay warning, nothing is counted yet
        still_trying=severity == "temporary",
    )


def _kind_of(name: str, severity: str, reason: str) -> tuple[EventKind, Verdict]:
    if name == "complained" or (name == "failed" and reason == "suppress-complaint"):
        return EventKind.COMPLAINT, Verdict.UNKNOWN
    if name == "unsubscribed" or (name == "failed" and reason == "suppress-unsubscribe"):
        return EventKind.UNSUBSCRIBE, Verdict.UNKNOWN
    if name == "failed" and severity == "permanent":
        return EventKind.BOUNCE, Verdict.GONE if reason in ("bounce", "suppress-bounce") else Verdict.UNKNOWN
    if name == "failed":
        return EventKind.BOUNCE, Verdict.TRANSIENT
    return EventKind.IGNORED, Verdict.UNKNOWN


@mailgun_pages.route("/mailgun", methods=["POST"], provide_automatic_options=False)
def mailgun_webhook() -> tuple[Response, int]:
    """A Mailgun webhook post: `signature` and one `event-data`."""
    hooks = web_context().config.webhooks
    if not hooks.mailgun_signing_key:
        abort(404)
    payload = read_json_object(raw_body(), "expected a Mailgun webhook object")
    try:
        token = check_signature(hooks, as_object(payload.get("signature")))

        def used_once(session: Session) -> None:
            # kept in the transaction that acts: a post the database failed on may come again
            if not remember_token(session, "mailgun", token):
                raise WebhookRefused(403, "this signature was used before")

        return act_on_events([mailgun_event(as_object(payload.get("event-data")))], guard=used_once)
    except WebhookRefused as refused:
        return refusal(refused)
