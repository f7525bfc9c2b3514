"""A campaign sent through a provider comes back by its webhooks, and `campaign status` tells what came back."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from cli_helpers import Cli
from compose_helpers import make_config, parse, render
from flask import Flask
from sending_helpers import add_audience, sending_config
from smtp_faults import FaultyServer
from webhook_helpers import mailgun_post, webhook_config

from mailer.config import SmtpConfig, SmtpProvider, load_config
from mailer.db import Database
from mailer.verp import parse_delivery_reference
from mailer.web import create_app

PEOPLE = [f"p{i}@example.com" for i in range(1, 6)]


def provider_reference(provider: SmtpProvider, message: bytes) -> str:
    """Our reference as the provider reads it from the header the composer added."""
    headers = parse(message)
    if provider is SmtpProvider.SES:
        tags = dict(tag.strip().split("=", 1) for tag in str(headers["X-SES-MESSAGE-TAGS"]).split(","))
        return tags["mailer_ref"]
    if provider is SmtpProvider.SENDGRID:
        return str(json.loads(str(headers["X-SMTPAPI"]))["unique_args"]["mailer_ref"])
    if provider is SmtpProvider.POSTMARK:
        return str(headers["X-PM-Metadata-mailer_ref"])
    return str(json.loads(str(headers["X-Mailgun-Variables"]))["mailer_ref"])


@pytest.mark.parametrize("provider", [p for p in SmtpProvider if p is not SmtpProvider.NONE])
def test_each_provider_header_carries_a_signed_reference_to_the_delivery(provider: SmtpProvider) -> None:
    config = make_config(smtp={"provider": provider.value})
    ref = provider_reference(provider, render(config).data)
    assert parse_delivery_reference(config, ref) == 501
    assert parse_delivery_reference(config, ref.replace("501", "502")) is None  # not guessable
    assert parse_delivery_reference(replace(config, smtp=SmtpConfig()), ref) == 501


def test_no_provider_header_without_a_provider() -> None:
    message = parse(render(make_config()).data)
    assert not {"X-SES-MESSAGE-TAGS", "X-SMTPAPI", "X-Mailgun-Variables"} & set(message.keys())
    assert not [name for name in message if name.startswith("X-PM-Metadata")]


@pytest.fixture
def sent(tmp_path: Path, database: Database, smtp_server: FaultyServer) -> Iterator[tuple[Cli, Flask, str]]:
    """Five people were sent a campaign through Mailgun; the web app takes Mailgun's webhooks."""
    add_audience(database, "news", PEOPLE)
    path = sending_config(tmp_path / "mailer.toml", database.url, smtp_server)
    path.write_text(path.read_text(encoding="utf-8").replace("[smtp]\n", '[smtp]\nprovider = "mailgun"\n'),
                    encoding="utf-8")
    cli = Cli(path)
    campaign_id = cli("campaign", "create", "--list", "news", "--subject", "Welcome to Harmony News",
                      "--template", "welcome").output.strip().splitlines()[-1]
    cli("campaign", "send", campaign_id)
    app = create_app(webhook_config(load_config(path, environ={})))
    yield cli, app, campaign_id
    app.extensions["mailer"].database.dispose()


def mailgun_event(smtp_server: FaultyServer, email: str, event: dict[str, object]) -> dict[str, object]:
    [message] = [m for m in smtp_server.messages if m.rcpt_tos == [email]]
    variables = json.loads(str(parse(message.data)["X-Mailgun-Variables"]))
    return mailgun_post(json.dumps({"id": f"{event['event']}-{email}", "recipient": email,
                                    "user-variables": variables, **event}))


def test_what_came_back_by_webhook_shows_in_campaign_status(
        sent: tuple[Cli, Flask, str], smtp_server: FaultyServer) -> None:
    cli, app, campaign_id = sent
    client = app.test_client()
    gone = {"event": "failed", "severity": "permanent", "reason": "bounce",
            "delivery-status": {"code": 550, "message": "5.1.1 No such user", "enhanced-code": "5.1.1"}}
    blocked = {"event": "failed", "severity": "permanent", "reason": "generic",
               "delivery-status": {"code": 550, "message": "5.7.1 Blocked by policy: poor reputation"}}
    for email, event in ((PEOPLE[0], gone), (PEOPLE[1], blocked), (PEOPLE[2], {"event": "complained"})):
        assert client.post("/webhooks/mailgun", json=mailgun_event(smtp_server, email, event)).status_code == 200
    [to_p4] = [m for m in smtp_server.messages if m.rcpt_tos == [PEOPLE[3]]]
    link = str(parse(to_p4.data)["List-Unsubscribe"]).split("<")[1].split(">")[0]
    assert client.post(link.replace("https://harmonymails.com", ""),
                       data={"List-Unsubscribe": "One-Click"}).status_code == 200

    status = json.loads(cli("campaign", "status", campaign_id, "--json").output)
    assert status["returns"] == {
        "hard_bounces": 1, "soft_bounces": 0, "policy_blocks": 1, "complaints": 1, "unsubscribes": 1,
        "complaint_rate": pytest.approx(1 / 3), "complaint_rate_limit": 0.003, "complaint_rate_too_high": True}
    assert status["deliveries"]["sent"] == 3 and status["deliveries"]["failed"] == 2
    text = cli("campaign", "status", campaign_id).output
    assert ("came back: 1 hard bounces, 0 soft bounces, 1 policy blocks, 1 complaints, 1 unsubscribes; "
            "complaint rate 33.33%") in text
    assert "warning: complaints are over 0.3% of delivered mail" in text


def test_a_campaign_nobody_complained_about_shows_no_warning(
        sent: tuple[Cli, Flask, str]) -> None:
    cli, _app, campaign_id = sent
    text = cli("campaign", "status", campaign_id).output
    assert "came back: 0 hard bounces, 0 soft bounces, 0 policy blocks, 0 complaints, 0 unsubscribes" in text
    assert "complaint rate 0.00%" in text and "warning" not in text
