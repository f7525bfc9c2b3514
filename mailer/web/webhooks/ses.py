"""POST /webhooks/ses: Amazon SES bounce, complaint and delivery notifications, through a verified SNS topic."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, abort, current_app, jsonify

from mailer.inbound.events import EventKind, ProviderEvent, Verdict
from mailer.verp import PROVIDER_REFERENCE_NAME
from mailer.web.context import web_context
from mailer.web.webhooks.common import (
    MAX_EVENTS,
    WebhookRefused,
    act_on_events,
    as_object,
    as_text,
    raw_body,
    read_json_object,
    refusal,
)
from mailer.web.webhooks.sns import SnsCertificates, verify_message

ses_pages = Blueprint("ses", __name__)

# where the app keeps its certificate cache (and, in tests, a fetcher that serves made-up certificates)
CERTIFICATES_KEY = "mailer.sns_certificates"
_BOUNCE_TYPES = {"Permanent": Verdict.GONE, "Transient": Verdict.TRANSIENT, "Undetermined": Verdict.UNKNOWN}


def sns_certificates() -> SnsCertificates:
    """The app's SNS certificate cache, made on first use."""
    found = current_app.extensions.get(CERTIFICATES_KEY)
    if not isinstance(found, SnsCertificates):
        found = current_app.extensions[CERTIFICATES_KEY] = SnsCertificates()
    return found


def ses_events(sns_message_id: str, notification: dict[str, Any]) -> Iterator[ProviderEvent]:
    """One event per recipient of an SES notification (event publishing's eventType too)."""
    kind = as_text(notification.get("notificationType") or notification.get("eventType"))
    mail = as_object(notification.get("mail"))
    tags = as_object(mail.get("tags")).get(PROVIDER_REFERENCE_NAME)
    common: dict[str, Any] = {
        "provider": "ses",
        "reference": as_text(tags[0], 100) if isinstance(tags, list) and tags else "",
        "message_id": as_text(as_object(mail.get("commonHeaders")).get("messageId"), 300),
    }
    if kind == "Bounce":
        yield from _bounces(sns_message_id, as_object(notification.get("bounce")), common)
    elif kind == "Complaint":
        yield from _complaints(sns_message_id, as_object(notification.get("complaint")), common)
    else:
        yield ProviderEvent(event_id=sns_message_id, kind=EventKind.IGNORED,
                            note=f"a {kind or 'nameless'} notification: nothing to do", **common)


def _recipients(block: dict[str, Any], field: str) -> list[dict[str, Any]]:
    found = block.get(field)
    return [as_object(item) for item in found[:MAX_EVENTS]] if isinstance(found, list) else []


def _bounces(sns_id: str, bounce: dict[str, Any], common: dict[str, Any]) -> Iterator[ProviderEvent]:
    verdict = _BOUNCE_TYPES.get(as_text(bounce.get("bounceType")), Verdict.UNKNOWN)
    feedback = as_text(bounce.get("feedbackId"), 200) or sns_id
    for recipient in _recipients(bounce, "bouncedRecipients"):
        email = as_text(recipient.get("emailAddress"), 320)
        yield ProviderEvent(event_id=f"{feedback}:{email}", kind=EventKind.BOUNCE, recipient=email,
                            verdict=verdict, status=as_text(recipient.get("status"), 20),
                            diagnostic=as_text(recipient.get("diagnosticCode")), **common)


def _complaints(sns_id: str, complaint: dict[str, Any], common: dict[str, Any]) -> Iterator[ProviderEvent]:
    # a "not-spam" report takes an earlier complaint back: it is no opt-out
    not_spam = as_text(complaint.get("complaintFeedbackType")) == "not-spam"
    feedback = as_text(complaint.get("feedbackId"), 200) or sns_id
    for recipient in _recipients(complaint, "complainedRecipients"):
        email = as_text(recipient.get("emailAddress"), 320)
        yield ProviderEvent(event_id=f"{feedback}:{email}",
                            kind=EventKind.IGNORED if not_spam else EventKind.COMPLAINT,
                            recipient=email, note="a not-spam report: nothing to do", **common)


@ses_pages.route("/ses", methods=["POST"], provide_automatic_options=False)
def ses_webhook() -> tuple[Response, int]:
    """An SNS message for a configured topic: a subscription to confirm or an SES notification."""
    hooks = web_context().config.webhooks
    if not hooks.ses_topic_arns:
        abort(404)
    message = read_json_object(raw_body(), "expected an SNS message")
    topic = as_text(message.get("TopicArn"), 300)
    try:
        if topic not in {arn.strip() for arn in hooks.ses_topic_arns}:
            # checked before any certificate is fetched: nobody can make us fetch for a stranger's topic
            raise WebhookRefused(403, "not a topic in webhooks.ses_topic_arns")
        certificates = sns_certificates()
        verify_message(certificates, message)
        kind = as_text(message.get("Type"))
        if kind == "SubscriptionConfirmation":
            certificates.confirm_subscription(as_text(message.get("SubscribeURL"), 2048))
            return jsonify(confirmed=topic), 200
        if kind != "Notification":
            return jsonify(ignored=kind), 200
    except WebhookRefused as refused:
        return refusal(refused)
    notification = read_json_object(as_text(message.get("Message"), 1 << 22).encode("utf-8"),
                                    "the SNS message holds no SES notification")
    return act_on_events(ses_events(as_text(message.get("MessageId"), 200), notification))
