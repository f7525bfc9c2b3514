"""POST /webhooks/postmark: Postmark's bounce and spam complaint webhooks, behind HTTP basic auth."""

from __future__ import annotations

import hmac
from typing import Any

from flask import Blueprint, Response, abort, request

from mailer.config import WebhooksConfig
from mailer.inbound.events import EventKind, ProviderEvent, Verdict
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

postmark_pages = Blueprint("postmark", __name__)

# Postmark's bounce types (its Type field) and what each says about the address
_BOUNCE_TYPES: dict[str, tuple[EventKind, Verdict]] = {
    "HardBounce": (EventKind.BOUNCE, Verdict.GONE),
    "BadEmailAddress": (EventKind.BOUNCE, Verdict.GONE),
    "Transient": (EventKind.BOUNCE, Verdict.TRANSIENT),
    "SoftBounce": (EventKind.BOUNCE, Verdict.TRANSIENT),
    "DnsError": (EventKind.BOUNCE, Verdict.TRANSIENT),
    "Blocked": (EventKind.BOUNCE, Verdict.POLICY),
    "DMARCPolicy": (EventKind.BOUNCE, Verdict.POLICY),
    "SpamComplaint": (EventKind.COMPLAINT, Verdict.UNKNOWN),
    "SpamNotification": (EventKind.COMPLAINT, Verdict.UNKNOWN),
}


def check_basic_auth(hooks: WebhooksConfig, authorization: Any) -> None:
    """Raises WebhookRefused (401) unless the request carries the configured user and password."""
    if authorization is None or authorization.type != "basic":
        raise WebhookRefused(401, "HTTP basic auth required")
    user_ok = hmac.compare_digest((authorization.username or "").encode(), hooks.postmark_username.encode())
    password_ok = hmac.compare_digest((authorization.password or "").encode(), hooks.postmark_password.encode())
    if not (user_ok and password_ok):
        raise WebhookRefused(401, "wrong user or password")


def postmark_event(payload: dict[str, Any]) -> ProviderEvent:
    """One Postmark bounce or spam complaint record as an event."""
    record = as_text(payload.get("RecordType"))
    bounce_type = as_text(payload.get("Type"))
    kind, verdict = _BOUNCE_TYPES.get(bounce_type, (EventKind.IGNORED, Verdict.UNKNOWN))
    if record not in ("Bounce", "SpamComplaint"):
        kind = EventKind.IGNORED
    return ProviderEvent(
        provider="postmark",
        event_id=f"{record}:{as_text(payload.get('ID'))}",
        kind=kind,
        recipient=as_text(payload.get("Email"), 320),
        reference=as_text(as_object(payload.get("Metadata")).get(PROVIDER_REFERENCE_NAME), 100),
        verdict=verdict,
        diagnostic=as_text(payload.get("Details")) or as_text(payload.get("Description")),
        note=f"a {record or 'record'} of type {bounce_type or 'none'}: nothing to do",
    )


@postmark_pages.route("/postmark", methods=["POST"], provide_automatic_options=False)
def postmark_webhook() -> tuple[Response, int]:
    """Postmark's Bounce and SpamComplaint webhooks (one record per post)."""
    hooks = web_context().config.webhooks
    if not hooks.postmark_username:
        abort(404)
    try:
        check_basic_auth(hooks, request.authorization)
    except WebhookRefused as refused:
        response, status = refusal(refused)
        response.headers["WWW-Authenticate"] = 'Basic realm="webhooks"'
        return response, status
    payload = read_json_object(raw_body(), "expected one Postmark record")
    return act_on_events([postmark_event(payload)])
