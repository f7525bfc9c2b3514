"""POST /webhooks/sendgrid: SendGrid's Signed Event Webhook (bounces, blocks, drops, spam reports, unsubscribes)."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from flask import Blueprint, Response, abort, request

from mailer.config import load_ec_public_key
from mailer.inbound.events import EventKind, ProviderEvent, Verdict
from mailer.verp import PROVIDER_REFERENCE_NAME
from mailer.web.context import web_context
from mailer.web.webhooks.common import (
    MAX_EVENTS,
    WebhookRefused,
    act_on_events,
    as_text,
    raw_body,
    read_json,
    refusal,
)

sendgrid_pages = Blueprint("sendgrid", __name__)

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"

# why SendGrid dropped a message without sending it: the ones that say something about the address
_DROPPED: dict[str, tuple[EventKind, Verdict]] = {
    "Bounced Address": (EventKind.BOUNCE, Verdict.GONE),
    "Invalid": (EventKind.BOUNCE, Verdict.GONE),
    "Spam Reporting Address": (EventKind.COMPLAINT, Verdict.UNKNOWN),
    "Unsubscribed Address": (EventKind.UNSUBSCRIBE, Verdict.UNKNOWN),
}


def check_signature(key: ec.EllipticCurvePublicKey, signature: str | None, timestamp: str | None,
                    body: bytes) -> None:
    """Raises WebhookRefused: 401 without the headers, 403 when the ECDSA signature does not verify."""
    if not signature or not timestamp:
        raise WebhookRefused(401, "no SendGrid signature")
    try:
        key.verify(base64.b64decode(signature, validate=True), timestamp.encode("ascii") + body,
                   ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, binascii.Error, ValueError, UnicodeEncodeError):
        raise WebhookRefused(403, "bad signature") from None


def sendgrid_event(item: dict[str, Any]) -> ProviderEvent:
    """One event of SendGrid's batch."""
    name = as_text(item.get("event"))
    kind, verdict = _kind_of(name, as_text(item.get("type")), as_text(item.get("reason")))
    return ProviderEvent(
        provider="sendgrid",
        event_id=as_text(item.get("sg_event_id"), 200),
        kind=kind,
        recipient=as_text(item.get("email"), 320),
        # unique_args from our X-SMTPAPI header come back as fields of the event
        reference=as_text(item.get(PROVIDER_REFERENCE_NAME), 100),
        message_id=as_text(item.get("smtp-id"), 300),
        verdict=verdict,
        status=as_text(item.get("status"), 20),
        diagnostic=as_text(item.get("reason")),
        note=f"a {name or 'nameless'} event: nothing to do",
    )


def _kind_of(name: str, bounce_type: str, reason: str) -> tuple[EventKind, Verdict]:
    if name == "bounce":
        # "blocked" (also sent as its own event name) is a refusal for the sender's sake
        return EventKind.BOUNCE, Verdict.POLICY if bounce_type == "blocked" else Verdict.GONE
    if name == "blocked":
        return EventKind.BOUNCE, Verdict.POLICY
    if name == "dropped":
        return _DROPPED.get(reason, (EventKind.IGNORED, Verdict.UNKNOWN))
    if name == "spamreport":
        return EventKind.COMPLAINT, Verdict.UNKNOWN
    if name in ("unsubscribe", "group_unsubscribe"):
        return EventKind.UNSUBSCRIBE, Verdict.UNKNOWN
    return EventKind.IGNORED, Verdict.UNKNOWN


@sendgrid_pages.route("/sendgrid", methods=["POST"], provide_automatic_options=False)
def sendgrid_webhook() -> tuple[Response, int]:
    """A batch of SendGrid events, signed with the account's Event Webhook key."""
    hooks = web_context().config.webhooks
    if not hooks.sendgrid_public_key:
        abort(404)
    body = raw_body()
    try:
        check_signature(load_ec_public_key(hooks.sendgrid_public_key), request.headers.get(SIGNATURE_HEADER),
                        request.headers.get(TIMESTAMP_HEADER), body)
    except WebhookRefused as refused:
        return refusal(refused)
    batch = read_json(body)
    if not isinstance(batch, list) or len(batch) > MAX_EVENTS:
        abort(400, f"expected a list of at most {MAX_EVENTS} events")
    return act_on_events(sendgrid_event(item) for item in batch if isinstance(item, dict))
