"""Provider webhooks for tests: payloads as the providers document them, signed with keys made here."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from flask import Flask
from hypothesis import strategies as st
from inbound_helpers import World
from recipient_helpers import Person

from mailer.config import Config, WebhooksConfig
from mailer.verp import make_return_path
from mailer.web import create_app
from mailer.web.webhooks.ses import CERTIFICATES_KEY
from mailer.web.webhooks.sns import SnsCertificates

FIXTURES = Path(__file__).parent / "fixtures" / "webhooks"
TOPIC = "arn:aws:sns:us-east-1:123456789012:ses-feedback"
CERT_URL = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-9c6465fa7f48f5cacd23014631ec1136.pem"
POSTMARK_USER, POSTMARK_PASSWORD = "postmark", "a-long-postmark-password-0123"
MAILGUN_KEY = "key-mailgun-signing-0123456789abcdef"
# any JSON object, with the keys providers use most often
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
KEYS = ["event", "type", "reason", "status", "email", "sg_event_id", "smtp-id", "mailer_ref", "severity",
        "delivery-status", "recipient", "id", "user-variables", "message", "RecordType", "Type", "ID", "Email",
        "Metadata", "Details", "notificationType", "bounce", "complaint", "mail", "bouncedRecipients"]
PAYLOAD = st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=10), JSON, max_size=8)


def reference(config: Config, delivery_id: int) -> str:
    """The delivery reference our provider header carries."""
    return make_return_path(config, delivery_id).partition("@")[0]


def payload(name: str, world: World, person: Person | None = None, delivery_id: int | None = None,
            ref: str | None = None, message_id: str | None = None) -> str:
    """A fixture with the recipient, our reference and our Message-ID filled in."""
    person = person or world.ana
    delivery_id = delivery_id or world.delivery_id
    message_id = message_id if message_id is not None else (
        f"<campaign-{world.campaign_id}.subscriber-{person.subscriber_id}@harmonymails.com>")
    text = (FIXTURES / f"{name}.json").read_text(encoding="utf-8")
    text = (text.replace("{{RCPT}}", person.email)
                .replace("{{REF}}", reference(world.config, delivery_id) if ref is None else ref)
                .replace("{{MESSAGE_ID_BARE}}", message_id.strip("<>"))
                .replace("{{MESSAGE_ID}}", message_id))
    assert "{{" not in text
    return text


class FakeSns:
    """SNS as seen from our endpoint: a signing key and certificate, and the URLs it was asked for."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
        now = dt.datetime.now(dt.UTC)
        self.certificate = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30)).sign(self.key, hashes.SHA256())
        )
        self.fetched: list[str] = []

    def serve(self, url: str) -> bytes:
        """What our fetcher gets: the certificate at CERT_URL, an answer at any subscribe URL."""
        self.fetched.append(url)
        if url == CERT_URL:
            return self.certificate.public_bytes(serialization.Encoding.PEM)
        return b"<ConfirmSubscriptionResponse/>"

    def install(self, app: Flask) -> None:
        app.extensions[CERTIFICATES_KEY] = SnsCertificates(fetch=self.serve)

    def message(self, body: str, kind: str = "Notification", version: str = "1", topic: str = TOPIC,
                **extra: str) -> dict[str, Any]:
        """An SNS message of `kind` carrying `body`, signed as SNS signs (SHA1 for version 1, SHA256 for 2)."""
        message: dict[str, Any] = {
            "Type": kind, "MessageId": secrets.token_hex(16), "TopicArn": topic, "Message": body,
            "Timestamp": "2026-11-29T15:00:00.000Z", "SignatureVersion": version, "SigningCertURL": CERT_URL,
            **extra,
        }
        if kind == "Notification":
            names = ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"]
        else:
            names = ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"]
        signed = "".join(f"{name}\n{message[name]}\n" for name in names if name in message).encode()
        digest = hashes.SHA1() if version == "1" else hashes.SHA256()
        message["Signature"] = base64.b64encode(self.key.sign(signed, padding.PKCS1v15(), digest)).decode()
        return message


class SendGridKeys:
    """The Signed Event Webhook's key pair, as SendGrid holds it and shows its public half."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        der = self.key.public_key().public_bytes(serialization.Encoding.DER,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)
        self.public = base64.b64encode(der).decode()

    def headers(self, body: bytes, timestamp: str | None = None) -> dict[str, str]:
        timestamp = timestamp or str(int(time.time()))
        signature = self.key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        return {"X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
                "X-Twilio-Email-Event-Webhook-Timestamp": timestamp, "Content-Type": "application/json"}


def mailgun_post(event_data: str, key: str = MAILGUN_KEY, timestamp: int | None = None,
                 token: str | None = None) -> dict[str, Any]:
    """A Mailgun webhook body: the event and a signature over timestamp and token."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    token = token or secrets.token_hex(25)
    signature = hmac.new(key.encode(), (stamp + token).encode(), hashlib.sha256).hexdigest()
    return {"signature": {"timestamp": stamp, "token": token, "signature": signature},
            "event-data": json.loads(event_data)}


def webhook_config(config: Config, sendgrid_public_key: str = "") -> Config:
    return replace(config, webhooks=WebhooksConfig(
        ses_topic_arns=(TOPIC,), sendgrid_public_key=sendgrid_public_key, postmark_username=POSTMARK_USER,
        postmark_password=POSTMARK_PASSWORD, mailgun_signing_key=MAILGUN_KEY))


def webhook_app(config: Config, sendgrid: SendGridKeys | None = None, sns: FakeSns | None = None) -> Flask:
    """The web app with every provider configured."""
    app = create_app(webhook_config(config, sendgrid.public if sendgrid else ""))
    if sns is not None:
        sns.install(app)
    return app
