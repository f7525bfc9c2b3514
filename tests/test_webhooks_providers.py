"""POST /webhooks/sendgrid, /postmark and /mailgun: signed events act once, unsigned ones change nothing."""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import given, settings
from hypothesis import strategies as st
from inbound_helpers import World, delivery_row
from recipient_helpers import audit_events, statuses, suppressions
from serve_helpers import free_port, start_serve, stop_serve
from webhook_helpers import (
    MAILGUN_KEY,
    PAYLOAD,
    POSTMARK_PASSWORD,
    POSTMARK_USER,
    SendGridKeys,
    mailgun_post,
    payload,
    webhook_app,
)

from mailer.config import DatabaseConfig
from mailer.models import (
    BounceEvent,
    BounceKind,
    DeliveryState,
    SubscriptionStatus,
    SuppressionReason,
)
from mailer.web import create_app


@pytest.fixture
def sendgrid() -> SendGridKeys:
    return SendGridKeys()


@pytest.fixture
def app(world: World, sendgrid: SendGridKeys) -> Iterator[Flask]:
    made = webhook_app(world.config, sendgrid=sendgrid)
    yield made
    made.extensions["mailer"].database.dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def bounce_kinds(world: World) -> list[BounceKind]:
    with world.database.session() as session:
        return list(session.scalars(sa.select(BounceEvent.kind).order_by(BounceEvent.id)))


def suppressed(world: World) -> list[tuple[str | None, SuppressionReason]]:
    return [(s.email, s.reason) for s in suppressions(world.database)]


def nothing_changed(world: World) -> bool:
    return (suppressed(world) == [] and bounce_kinds(world) == []
            and delivery_row(world.database, world.delivery_id).state is DeliveryState.SENT)


def basic_auth(user: str = POSTMARK_USER, password: str = POSTMARK_PASSWORD) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


# SendGrid

def post_sendgrid(client: FlaskClient, keys: SendGridKeys, body: str) -> tuple[int, dict[str, object]]:
    response = client.post("/webhooks/sendgrid", data=body.encode(), headers=keys.headers(body.encode()))
    return response.status_code, response.get_json(silent=True) or {}


def test_sendgrid_bounce_suppresses_and_other_events_in_the_batch_change_nothing(
        client: FlaskClient, sendgrid: SendGridKeys, world: World) -> None:
    status, body = post_sendgrid(client, sendgrid, payload("sendgrid_bounce", world))
    assert (status, body["outcomes"]) == (200, {"hard_bounce": 1, "other": 1})
    assert suppressed(world) == [("ana@example.net", SuppressionReason.HARD_BOUNCE)]
    assert delivery_row(world.database, world.delivery_id).state is DeliveryState.FAILED


def test_sendgrid_drop_for_an_address_that_bounced_before_suppresses_and_other_drops_do_not(
        client: FlaskClient, sendgrid: SendGridKeys, world: World) -> None:
    status, body = post_sendgrid(client, sendgrid, payload("sendgrid_dropped", world))
    assert (status, body["outcomes"]) == (200, {"hard_bounce": 1, "other": 1})
    assert suppressed(world) == [("ana@example.net", SuppressionReason.HARD_BOUNCE)]


def test_sendgrid_text_that_is_not_unicode_is_read_as_far_as_it_goes(
        client: FlaskClient, sendgrid: SendGridKeys, world: World) -> None:
    body = payload("sendgrid_bounce", world).replace("does not exist.", "does not exist \\udc80.")
    assert "\\udc80" in body
    status, answer = post_sendgrid(client, sendgrid, body)
    assert (status, answer["outcomes"]) == (200, {"hard_bounce": 1, "other": 1})
    assert suppressed(world) == [("ana@example.net", SuppressionReason.HARD_BOUNCE)]


def test_sendgrid_block_is_a_policy_block_that_suppresses_nobody(
        client: FlaskClient, sendgrid: SendGridKeys, world: World) -> None:
    status, body = post_sendgrid(client, sendgrid, payload("sendgrid_blocked", world))
    assert (status, body["outcomes"]) == (200, {"policy_block": 1})
    assert suppressed(world) == [] and bounce_kinds(world) == [BounceKind.POLICY]


def test_sendgrid_spam_report_suppresses(client: FlaskClient, sendgrid: SendGridKeys, world: World) -> None:
    status, body = post_sendgrid(client, sendgrid, payload("sendgrid_spamreport", world))
    assert (status, body["outcomes"]) == (200, {"complaint": 1})
    assert suppressed(world) == [("ana@example.net", SuppressionReason.COMPLAINT)]


def test_sendgrid_unsubscribe_opts_out_with_an_audit_record(
        client: FlaskClient, sendgrid: SendGridKeys, world: World) -> None:
    status, body = post_sendgrid(client, sendgrid, payload("sendgrid_group_unsubscribe", world))
    assert (status, body["outcomes"]) == (200, {"unsubscribe": 1})
    assert suppressed(world) == [("ana@example.net", SuppressionReason.UNSUBSCRIBED)]
    assert set(statuses(world.database, world.ana).values()) == {SubscriptionStatus.UNSUBSCRIBED}
    [event] = audit_events(world.database, "unsubscribe")
    assert (event.reason, event.detail["campaign_id"]) == ("sendgrid webhook", world.campaign_id)
    assert post_sendgrid(client, sendgrid, payload("sendgrid_group_unsubscribe", world))[1]["outcomes"] == {
        "already_processed": 1}
    assert len(audit_events(world.database, "unsubscribe")) == 1


@pytest.mark.parametrize("tamper", ["unsigned", "other_key", "body", "timestamp"])
def test_sendgrid_refuses_what_it_did_not_sign(
        client: FlaskClient, sendgrid: SendGridKeys, world: World, tamper: str) -> None:
    body = payload("sendgrid_bounce", world).encode()
    headers = sendgrid.headers(body, timestamp="1764428378")
    if tamper == "unsigned":
        headers = {"Content-Type": "application/json"}
    elif tamper == "other_key":
        headers = SendGridKeys().headers(body)
    elif tamper == "body":
        body = payload("sendgrid_bounce", world, person=world.bob, delivery_id=world.bob_delivery).encode()
    else:
        headers["X-Twilio-Email-Event-Webhook-Timestamp"] = "1764428379"
    status = client.post("/webhooks/sendgrid", data=body, headers=headers).status_code
    assert status == (401 if tamper == "unsigned" else 403)
    assert nothing_changed(world)


# Postmark

def test_postmark_hard_bounce_suppresses(client: FlaskClient, world: World) -> None:
    response = client.post("/webhooks/postmark", data=payload("postmark_hard_bounce", world), headers=basic_auth())
    assert (response.status_code, response.get_json()["outcomes"]) == (200, {"hard_bounce": 1})
    assert suppressed(world) == [("ana@example.net", SuppressionReason.HARD_BOUNCE)]


def test_postmark_dmarc_rejection_suppresses_nobody(client: FlaskClient, world: World) -> None:
    response = client.post("/webhooks/postmark", data=payload("postmark_dmarc_policy", world), headers=basic_auth())
    assert (response.status_code, response.get_json()["outcomes"]) == (200, {"policy_block": 1})
    assert suppressed(world) == [] and bounce_kinds(world) == [BounceKind.POLICY]
    assert delivery_row(world.database, world.delivery_id).state is DeliveryState.FAILED


def test_postmark_spam_complaint_suppresses(client: FlaskClient, world: World) -> None:
    response = client.post("/webhooks/postmark", data=payload("postmark_spam_complaint", world),
                           headers=basic_auth())
    assert response.get_json()["outcomes"] == {"complaint": 1}
    assert suppressed(world) == [("ana@example.net", SuppressionReason.COMPLAINT)]


@pytest.mark.parametrize("headers", [{}, basic_auth(password="wrong-password-0123456"), basic_auth(user="other")])
def test_postmark_without_the_password_changes_nothing(
        client: FlaskClient, world: World, headers: dict[str, str]) -> None:
    response = client.post("/webhooks/postmark", data=payload("postmark_hard_bounce", world), headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert nothing_changed(world)


# Mailgun

def post_mailgun(client: FlaskClient, body: dict[str, object]) -> tuple[int, dict[str, object]]:
    response = client.post("/webhooks/mailgun", json=body)
    return response.status_code, response.get_json(silent=True) or {}


def test_mailgun_permanent_failure_suppresses(client: FlaskClient, world: World) -> None:
    status, body = post_mailgun(client, mailgun_post(payload("mailgun_failed_permanent", world)))
    assert (status, body["outcomes"]) == (200, {"hard_bounce": 1})
    assert suppressed(world) == [("ana@example.net", SuppressionReason.HARD_BOUNCE)]


def test_mailgun_temporary_failure_is_not_counted_while_mailgun_retries(client: FlaskClient, world: World) -> None:
    status, body = post_mailgun(client, mailgun_post(payload("mailgun_failed_temporary", world)))
    assert (status, body["outcomes"]) == (200, {"delayed": 1})
    assert nothing_changed(world)


def test_mailgun_complaint_found_by_message_id_alone(client: FlaskClient, world: World) -> None:
    status, body = post_mailgun(client, mailgun_post(payload("mailgun_complained", world, ref="")))
    assert (status, body["outcomes"]) == (200, {"complaint": 1})
    assert suppressed(world) == [("ana@example.net", SuppressionReason.COMPLAINT)]


def test_mailgun_refuses_a_replayed_signature(client: FlaskClient, world: World) -> None:
    signed = mailgun_post(payload("mailgun_failed_temporary", world))
    assert post_mailgun(client, signed)[0] == 200
    assert post_mailgun(client, signed)[0] == 403
    # the same token with another event is no more welcome
    signed["event-data"] = json.loads(payload("mailgun_failed_permanent", world))
    assert post_mailgun(client, signed)[0] == 403
    assert nothing_changed(world)


@pytest.mark.parametrize("tamper", ["unsigned", "other_key", "stale", "future", "event"])
def test_mailgun_refuses_what_it_did_not_sign_now(client: FlaskClient, world: World, tamper: str) -> None:
    event = payload("mailgun_failed_permanent", world)
    signed = {
        "unsigned": {"event-data": json.loads(event)},
        "other_key": mailgun_post(event, key="key-someone-else-0123456789"),
        "stale": mailgun_post(event, timestamp=int(time.time()) - 301),
        "future": mailgun_post(event, timestamp=int(time.time()) + 301),
        "event": mailgun_post(event),
    }[tamper]
    if tamper == "event":
        signed["signature"]["signature"] = mailgun_post(event)["signature"]["signature"]  # type: ignore[index]
    status, _ = post_mailgun(client, signed)
    assert status == (401 if tamper == "unsigned" else 403)
    assert nothing_changed(world)


def test_the_same_failure_by_two_providers_and_twice_acts_once(
        client: FlaskClient, sendgrid: SendGridKeys, world: World) -> None:
    post_mailgun(client, mailgun_post(payload("mailgun_failed_permanent", world)))
    post_mailgun(client, mailgun_post(payload("mailgun_failed_permanent", world)))
    post_sendgrid(client, sendgrid, payload("sendgrid_bounce", world))
    assert bounce_kinds(world) == [BounceKind.HARD]
    assert len(audit_events(world.database, "suppress")) == 1


@pytest.mark.parametrize("path", ["/webhooks/sendgrid", "/webhooks/postmark", "/webhooks/mailgun"])
def test_each_provider_is_off_until_configured(world: World, path: str) -> None:
    plain = create_app(world.config)
    try:
        assert plain.test_client().post(path, json=[]).status_code == 404
    finally:
        plain.extensions["mailer"].database.dispose()


@pytest.mark.parametrize("body", [b"not json", b"[" * 100_000, b'{"a": 1}'])
def test_a_body_that_is_no_batch_is_refused_and_changes_nothing(
        client: FlaskClient, sendgrid: SendGridKeys, world: World, body: bytes) -> None:
    response = client.post("/webhooks/sendgrid", data=body, headers=sendgrid.headers(body))
    assert response.status_code == 400
    assert nothing_changed(world)


def test_a_body_over_the_limit_is_refused(client: FlaskClient, sendgrid: SendGridKeys) -> None:
    body = b"[" + b" " * (5 * 1024 * 1024) + b"]"
    assert client.post("/webhooks/sendgrid", data=body, headers=sendgrid.headers(body)).status_code == 413


def test_a_bounce_by_dsn_and_by_webhook_acts_once(client: FlaskClient, world: World) -> None:
    report = world.process("gmail_hard_bounce")
    assert [item.kind.value for item in report.items] == ["hard_bounce"]
    status, _ = post_mailgun(client, mailgun_post(payload("mailgun_failed_permanent", world)))
    assert status == 200
    assert bounce_kinds(world) == [BounceKind.HARD]
    assert len(audit_events(world.database, "suppress")) == 1


def test_a_complaint_by_webhook_and_by_feedback_loop_mail_acts_once(client: FlaskClient, world: World) -> None:
    response = client.post("/webhooks/postmark", data=payload("postmark_spam_complaint", world),
                           headers=basic_auth())
    assert response.get_json()["outcomes"] == {"complaint": 1}
    report = world.process("yahoo_complaint")
    assert [item.kind.value for item in report.items] == ["complaint"]
    assert "(already)" in report.items[0].note
    assert bounce_kinds(world) == [BounceKind.COMPLAINT]
    assert suppressed(world) == [("ana@example.net", SuppressionReason.COMPLAINT)]
    assert len(audit_events(world.database, "suppress")) == 1


def test_mailer_serve_takes_signed_webhooks_through_waitress(config_path: Path, world: World) -> None:
    with config_path.open("a", encoding="utf-8") as config_file:
        config_file.write(f'\n[webhooks]\nmailgun_signing_key = "{MAILGUN_KEY}"\n'
                          f'postmark_username = "{POSTMARK_USER}"\npostmark_password = "{POSTMARK_PASSWORD}"\n')
    port = free_port()
    server = start_serve(config_path, port)
    try:
        mailgun = json.dumps(mailgun_post(payload("mailgun_complained", world))).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/webhooks/mailgun", data=mailgun,
                                         headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert json.load(response)["outcomes"] == {"complaint": 1}
        with pytest.raises(urllib.error.HTTPError) as replayed:
            urllib.request.urlopen(request, timeout=10)
        replayed.value.close()
        assert replayed.value.code == 403
        postmark = urllib.request.Request(
            f"http://127.0.0.1:{port}/webhooks/postmark", method="POST",
            data=payload("postmark_hard_bounce", world, person=world.bob, delivery_id=world.bob_delivery).encode(),
            headers={"Content-Type": "application/json", **basic_auth()})
        with urllib.request.urlopen(postmark, timeout=10) as response:
            assert json.load(response)["outcomes"] == {"hard_bounce": 1}
    finally:
        stop_serve(server)
    assert sorted(suppressed(world)) == [("ana@example.net", SuppressionReason.COMPLAINT),
                                         ("bob@example.org", SuppressionReason.HARD_BOUNCE)]


def test_a_database_that_is_down_answers_503_so_the_provider_posts_again(
        tmp_path: Path, world: World, sendgrid: SendGridKeys) -> None:
    gone = replace(world.config, database=DatabaseConfig(url=f"sqlite:///{tmp_path / 'missing' / 'm.db'}"))
    down = webhook_app(gone, sendgrid=sendgrid)
    try:
        body = payload("sendgrid_bounce", world)
        response = down.test_client().post("/webhooks/sendgrid", data=body.encode(),
                                           headers=sendgrid.headers(body.encode()))
    finally:
        down.extensions["mailer"].database.dispose()
    assert response.status_code == 503
    assert nothing_changed(world)


@settings(max_examples=40)
@given(st.lists(PAYLOAD, max_size=5))
def test_any_authentic_post_is_answered_one_event_at_a_time(
        client: FlaskClient, sendgrid: SendGridKeys, world: World, batch: list[dict[str, object]]) -> None:
    body = json.dumps(batch).encode()
    answer = client.post("/webhooks/sendgrid", data=body, headers=sendgrid.headers(body))
    assert answer.status_code == 200 and answer.get_json()["events"] == len(batch)
    for one in batch[:2]:
        assert client.post("/webhooks/postmark", json=one, headers=basic_auth()).status_code == 200
        assert post_mailgun(client, {**mailgun_post("{}"), "event-data": one})[0] == 200
    assert suppressed(world) == []
