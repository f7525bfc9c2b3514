"""POST /webhooks/ses: SNS-signed SES notifications act as the same bounce or complaint by mail does."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from flask import Flask
from inbound_helpers import World, delivery_row
from recipient_helpers import audit_events, statuses, suppressions
from webhook_helpers import CERT_URL, TOPIC, FakeSns, payload, webhook_app

from mailer.models import (
    BounceEvent,
    BounceKind,
    DeliveryState,
    SubscriptionStatus,
    SuppressionReason,
)
from mailer.web import create_app
from mailer.web.webhooks.common import WebhookRefused
from mailer.web.webhooks.sns import check_sns_url


@pytest.fixture
def app(world: World) -> Iterator[Flask]:
    made = webhook_app(world.config)
    yield made
    made.extensions["mailer"].database.dispose()


def post(app: Flask, sns: FakeSns, message: dict[str, object]) -> tuple[int, dict[str, object]]:
    sns.install(app)
    response = app.test_client().post("/webhooks/ses", data=json.dumps(message),
                                      headers={"Content-Type": "text/plain; charset=UTF-8",
                                               "x-amz-sns-message-type": str(message["Type"])})
    return response.status_code, response.get_json(silent=True) or {}


def bounce_kinds(world: World) -> list[BounceKind]:
    with world.database.session() as session:
        return list(session.scalars(sa.select(BounceEvent.kind).order_by(BounceEvent.id)))


@pytest.mark.parametrize("version", ["1", "2"])
def test_a_permanent_bounce_fails_the_delivery_and_suppresses_the_address(app: Flask, world: World, version: str) -> None:
    sns = FakeSns()
    status, body = post(app, sns, sns.message(payload("ses_bounce_permanent", world), version=version))
    assert (status, body["outcomes"]) == (200, {"hard_bounce": 1})
    assert [(s.email, s.reason) for s in suppressions(world.database)] == [
        ("ana@example.net", SuppressionReason.HARD_BOUNCE)]
    assert delivery_row(world.database, world.delivery_id).state is DeliveryState.FAILED
    assert delivery_row(world.database, world.bob_delivery).state is DeliveryState.SENT
    assert sns.fetched == [CERT_URL]
    trail = audit_events(world.database, "suppress")
    assert [(e.actor, e.detail["delivery_id"]) for e in trail] == [("inbound", world.delivery_id)]
    assert "5.1.1 Amazon SES webhook: smtp; 550 5.1.1" in trail[0].reason


def test_a_transient_bounce_only_counts(app: Flask, world: World) -> None:
    sns = FakeSns()
    status, body = post(app, sns, sns.message(payload("ses_bounce_transient", world)))
    assert (status, body["outcomes"]) == (200, {"soft_bounce": 1})
    assert suppressions(world.database) == []
    assert bounce_kinds(world) == [BounceKind.SOFT]


def test_a_complaint_suppresses_and_unsubscribes_from_every_list(app: Flask, world: World) -> None:
    sns = FakeSns()
    status, body = post(app, sns, sns.message(payload("ses_complaint", world)))
    assert (status, body["outcomes"]) == (200, {"complaint": 1})
    assert [(s.email, s.reason) for s in suppressions(world.database)] == [
        ("ana@example.net", SuppressionReason.COMPLAINT)]
    assert set(statuses(world.database, world.ana).values()) == {SubscriptionStatus.UNSUBSCRIBED}
    assert bounce_kinds(world) == [BounceKind.COMPLAINT]


def test_the_message_id_alone_finds_the_delivery_when_no_tag_came_back(app: Flask, world: World) -> None:
    sns = FakeSns()
    body = payload("ses_bounce_permanent", world, ref="")
    status, _ = post(app, sns, sns.message(body))
    assert status == 200
    assert delivery_row(world.database, world.delivery_id).state is DeliveryState.FAILED


def test_a_delivery_notification_changes_nothing(app: Flask, world: World) -> None:
    sns = FakeSns()
    status, body = post(app, sns, sns.message(payload("ses_delivery", world)))
    assert (status, body["outcomes"]) == (200, {"other": 1})
    assert suppressions(world.database) == [] and bounce_kinds(world) == []


def test_the_same_notification_twice_acts_once(app: Flask, world: World) -> None:
    sns = FakeSns()
    message = sns.message(payload("ses_bounce_permanent", world))
    assert post(app, sns, message)[1]["outcomes"] == {"hard_bounce": 1}
    assert post(app, sns, message)[1]["outcomes"] == {"already_processed": 1}
    assert len(audit_events(world.database, "suppress")) == 1
    assert bounce_kinds(world) == [BounceKind.HARD]


@pytest.mark.parametrize("tamper", ["message", "signature", "version", "cert_url", "topic"])
def test_a_message_sns_did_not_sign_changes_nothing(app: Flask, world: World, tamper: str) -> None:
    sns = FakeSns()
    message = sns.message(payload("ses_bounce_permanent", world))
    if tamper == "message":
        message["Message"] = payload("ses_bounce_permanent", world, person=world.bob, delivery_id=world.bob_delivery)
    elif tamper == "signature":
        message["Signature"] = FakeSns().message("x")["Signature"]
    elif tamper == "version":
        message["SignatureVersion"] = "3"
    elif tamper == "cert_url":
        message["SigningCertURL"] = "https://sns.us-east-1.amazonaws.com.evil.example/cert.pem"
    else:
        message = sns.message(payload("ses_bounce_permanent", world), topic=TOPIC.replace("ses-feedback", "other"))
    status, _ = post(app, sns, message)
    assert status == 403
    assert suppressions(world.database) == [] and bounce_kinds(world) == []
    assert delivery_row(world.database, world.delivery_id).state is DeliveryState.SENT
    if tamper in ("cert_url", "topic"):
        assert sns.fetched == []  # nothing was fetched from a host or for a topic not ours


def test_a_subscription_is_confirmed_for_a_configured_topic_only(app: Flask, world: World) -> None:
    sns = FakeSns()
    subscribe = "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn=x&Token=2336412f37"
    extra = {"SubscribeURL": subscribe, "Token": "2336412f37"}
    status, body = post(app, sns, sns.message("You have chosen to subscribe to the topic.",
                                                kind="SubscriptionConfirmation", **extra))
    assert (status, body) == (200, {"confirmed": TOPIC})
    assert sns.fetched == [CERT_URL, subscribe]

    stranger = FakeSns()
    status, _ = post(app, stranger, stranger.message("subscribe", kind="SubscriptionConfirmation",
                                                       topic="arn:aws:sns:us-east-1:999999999999:theirs", **extra))
    assert status == 403 and stranger.fetched == []


def test_a_subscribe_url_off_sns_is_never_fetched(app: Flask, world: World) -> None:
    sns = FakeSns()
    extra = {"SubscribeURL": "https://attacker.example/confirm", "Token": "t"}
    status, _ = post(app, sns, sns.message("subscribe", kind="SubscriptionConfirmation", **extra))
    assert status == 403
    assert sns.fetched == [CERT_URL]


@pytest.mark.parametrize("url", [
    "http://sns.us-east-1.amazonaws.com/cert.pem",
    "https://sns.us-east-1.amazonaws.com.evil.example/cert.pem",
    "https://evil.example/sns.us-east-1.amazonaws.com/cert.pem",
    "https://sns.us-east-1.amazonaws.com:8443/cert.pem",
    "https://user@sns.us-east-1.amazonaws.com/cert.pem",
    "https://s3.amazonaws.com/cert.pem",
    "https://127.0.0.1/cert.pem",
])
def test_certificates_come_only_from_sns_over_https(url: str) -> None:
    with pytest.raises(WebhookRefused):
        check_sns_url(url)


@pytest.mark.parametrize("url", [CERT_URL, "https://sns.eu-central-1.amazonaws.com/x.pem",
                                 "https://sns.cn-north-1.amazonaws.com.cn/x.pem"])
def test_the_sns_hosts_of_every_region_are_believed(url: str) -> None:
    check_sns_url(url)


def test_off_until_configured(world: World) -> None:
    plain = create_app(world.config)
    try:
        assert plain.test_client().post("/webhooks/ses", data="{}").status_code == 404
    finally:
        plain.extensions["mailer"].database.dispose()
