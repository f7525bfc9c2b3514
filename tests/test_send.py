"""The sending pipeline end to end: real database, real SMTP server on loopback, the CLI."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from cli_helpers import Cli
from sending_helpers import (
    add_audience,
    campaign_row,
    configure,
    delivery_states,
    emails,
    make_campaign,
    sending_config,
    state_counts,
)
from smtp_faults import FaultyServer, Received

from mailer.db import Database
from mailer.delivery.deliveries import snapshot_audience
from mailer.delivery.due import send_due
from mailer.delivery.pipeline import CampaignSender, send_campaign_now
from mailer.errors import DeliveryError
from mailer.lifecycle import begin_send, start_send
from mailer.models import (
    Campaign,
    CampaignKind,
    CampaignStatus,
    DeliveryState,
    Subscriber,
    SubscriptionStatus,
    Suppression,
    SuppressionReason,
    utcnow,
)
from mailer.recipients.suppression import suppress_address


def test_campaign_send_reaches_every_active_subscriber_once(
    tmp_path: Path, database: Database, smtp_server: FaultyServer
) -> None:
    add_audience(database, "news", ["ana@example.com", "bo@example.com", "cy@example.com"])
    add_audience(database, "news", ["left@example.com"], status=SubscriptionStatus.UNSUBSCRIBED)
    add_audience(database, "news", ["unconfirmed@example.com"], status=SubscriptionStatus.UNCONFIRMED)
    add_audience(database, "news", ["optedout@example.com"])
    with database.session() as session:
        suppress_address(session, "OptedOut@example.com", SuppressionReason.UNSUBSCRIBED, "test")
    cli = Cli(sending_config(tmp_path / "mailer.toml", database.url, smtp_server))
    campaign_id = cli("campaign", "create", "--list", "news", "--subject", "Welcome to Harmony News",
                      "--template", "welcome").output.strip().splitlines()[-1]

    result = cli("campaign", "send", campaign_id)

    assert "3 sent, 0 deferred, 0 failed" in result.output
    assert "status: sent" in result.output
    assert sorted(smtp_server.handler.rcpt_counts.items()) == [
        ("ana@example.com", 1), ("bo@example.com", 1), ("cy@example.com", 1)]
    status = json.loads(cli("campaign", "status", campaign_id, "--json").output)
    assert status["status"] == "sent"
    assert status["deliveries"]["sent"] == 3
    again = cli("campaign", "send", campaign_id, ok=False)
    assert again.exit_code == 1
    assert "it is sent" in again.output + again.stderr
    assert len(smtp_server.messages) == 3


def test_a_suppression_committed_mid_send_stops_that_address(
    tmp_path: Path, database: Database, smtp_server: FaultyServer
) -> None:
    addresses = emails(300)
    target = addresses[250]
    list_id = add_audience(database, "news", addresses)
    campaign_id = make_campaign(database, list_id)
    config = configure(tmp_path, database, smtp_server, batch_size=10, connections=2)
    other = Database(database.url)

    def unsubscribe_on_the_fiftieth(received: Received) -> None:
        if len(smtp_server.messages) == 50:
            with other.session() as session:  # the web app's one-click POST, in another connection
                suppress_address(session, target, SuppressionReason.UNSUBSCRIBED, "web")

    smtp_server.handler.on_message = unsubscribe_on_the_fiftieth
    start_send(config, database, campaign_id)
    report = send_campaign_now(config, database, campaign_id)
    other.dispose()

    counts = smtp_server.handler.rcpt_counts
    assert target not in counts
    assert set(counts.values()) == {1}
    assert len(counts) == 299
    assert report.sent == 299 and report.suppressed == 1
    assert delivery_states(database, campaign_id)[target].state is DeliveryState.SUPPRESSED


def test_permanent_failures_fail_and_no_such_user_is_suppressed(
    tmp_path: Path, database: Database, smtp_server: FaultyServer
) -> None:
    list_id = add_audience(database, "news", ["gone@example.com", "policy@example.com", "ok@example.com"])
    smtp_server.faults.rcpt_replies.update({
        "gone@example.com": "550 5.1.1 <gone@example.com>: no such user",
        "policy@example.com": "554 5.7.1 rejected by policy",
    })
    campaign_id = make_campaign(database, list_id)
    config = configure(tmp_path, database, smtp_server)
    start_send(config, database, campaign_id)
    report = send_campaign_now(config, database, campaign_id)

    assert (report.sent, report.failed, report.hard_bounces) == (1, 2, 1)
    rows = delivery_states(database, campaign_id)
    assert rows["gone@example.com"].state is DeliveryState.FAILED
    assert rows["gone@example.com"].last_code == 550
    assert "no such user" in rows["gone@example.com"].last_response
    assert rows["policy@example.com"].state is DeliveryState.FAILED
    with database.session() as session:
        reasons = dict(session.execute(sa.select(Suppression.email, Suppression.reason)).all())
    assert reasons == {"gone@example.com": SuppressionReason.HARD_BOUNCE}
    assert campaign_row(database, campaign_id).status is CampaignStatus.SENT


def test_4xx_is_deferred_with_growing_delays_until_retry_for_then_failed(
    tmp_path: Path, database: Database, smtp_server: FaultyServer
) -> None:
    list_id = add_audience(database, "news", ["busy@example.com", "ok@example.com"])
    smtp_server.faults.rcpt_replies["busy@example.com"] = "451 4.3.0 greylisted, try again later"
    campaign_id = make_campaign(database, list_id)
    config = configure(tmp_path, database, smtp_server, retry_for=400)
    t0 = utcnow()
    now = [t0]
    start_send(config, database, campaign_id, t0)

    def run(at: dt.datetime) -> None:
        now[0] = at
        asyncio.run(send_due(config, database, clock=lambda: now[0]))

    run(t0)
    first = delivery_states(database, campaign_id)["busy@example.com"]
    assert first.state is DeliveryState.DEFERRED and first.last_code == 451
    assert first.next_attempt_at is not None
    delay1 = first.next_attempt_at - t0
    assert campaign_row(database, campaign_id).status is CampaignStatus.SENDING

    run(t0 + dt.timedelta(seconds=30))  # not due yet: nothing happens
    assert delivery_states(database, campaign_id)["busy@example.com"].attempts == 1

    t1 = first.next_attempt_at + dt.timedelta(seconds=1)
    run(t1)
    second = delivery_states(database, campaign_id)["busy@example.com"]
    assert second.state is DeliveryState.DEFERRED and second.attempts == 2
    assert second.next_attempt_at is not None
    assert second.next_attempt_at - t1 > delay1  # the wait grows

    run(second.next_attempt_at + dt.timedelta(seconds=1))
    last = delivery_states(database, campaign_id)["busy@example.com"]
    assert last.state is DeliveryState.FAILED and last.attempts == 3
    assert "gave up after 3 attempts" in last.last_response
    assert campaign_row(database, campaign_id).status is CampaignStatus.SENT
    assert smtp_server.handler.rcpt_counts == {"ok@example.com": 1}


def test_relay_down_pauses_the_campaign_with_a_reason_and_resume_goes_on(
    tmp_path: Path, database: Database, smtp_server: FaultyServer
) -> None:
    list_id = add_audience(database, "news", emails(20))
    campaign_id = make_campaign(database, list_id)
    cli = Cli(sending_config(tmp_path / "mailer.toml", database.url, smtp_server, max_errors=3, batch_size=5))
    smtp_server.faults.refuse_all_connections = True

    result = cli("campaign", "send", str(campaign_id), ok=False)

    assert result.exit_code == 1
    assert "paused after 3 connection failures in a row" in result.output + result.stderr
    campaign = campaign_row(database, campaign_id)
    assert campaign.status is CampaignStatus.PAUSED
    assert "421" in campaign.status_reason
    assert state_counts(database, campaign_id) == {DeliveryState.PENDING: 20}  # nothing spent or lost
    assert "reason: paused after 3" in cli("campaign", "status", str(campaign_id)).output
    refused = cli("campaign", "send", str(campaign_id), ok=False)
    assert "campaign resume" in refused.output + refused.stderr

    smtp_server.faults.refuse_all_connections = False
    resumed = cli("campaign", "resume", str(campaign_id))

    assert "20 sent" in resumed.output
    assert set(smtp_server.handler.rcpt_counts.values()) == {1} and len(smtp_server.handler.rcpt_counts) == 20
    assert campaign_row(database, campaign_id).status is CampaignStatus.SENT


def test_a_dropped_connection_defers_one_message_and_retry_sends_it(
    tmp_path: Path, database: Database, smtp_server: FaultyServer
) -> None:
    list_id = add_audience(database, "news", emails(10))
    campaign_id = make_campaign(database, list_id)
    cli = Cli(sending_config(tmp_path / "mailer.toml", database.url, smtp_server, connections=1))
    smtp_server.faults.drop_data = 1

    first = cli("campaign", "send", str(campaign_id))

    assert "9 sent, 1 deferred" in first.output
    assert "next retry of deferred messages" in first.output
    deferred = [a for a, d in delivery_states(database, campaign_id).items() if d.state is DeliveryState.DEFERRED]
    assert len(deferred) == 1 and deferred[0] not in smtp_server.handler.rcpt_counts

    retried = cli("campaign", "retry", str(campaign_id))

    assert "1 deliveries queued again" in retried.output
    assert "1 sent" in retried.output
    assert set(smtp_server.handler.rcpt_counts.values()) == {1} and len(smtp_server.handler.rcpt_counts) == 10
    assert campaign_row(database, campaign_id).status is CampaignStatus.SENT


def test_retry_in_doubt_is_separate_from_retry(tmp_path: Path, database: Database, smtp_server: FaultyServer) -> None:
    list_id = add_audience(database, "news", emails(4))
    campaign_id = make_campaign(database, list_id)
    config = configure(tmp_path, database, smtp_server)
    start_send(config, database, campaign_id)
    # what a killed sender leaves behind (test_crash proves a real SIGKILL does this)
    with database.session() as session:
        session.execute(sa.text("UPDATE deliveries SET state = 'in_doubt' WHERE id IN "
                                "(SELECT id FROM deliveries ORDER BY id LIMIT 2)"))
    send_campaign_now(config, database, campaign_id)
    assert len(smtp_server.messages) == 2
    assert campaign_row(database, campaign_id).status is CampaignStatus.SENT
    cli = Cli(tmp_path / "mailer.toml")

    assert "0 deliveries queued again" in cli("campaign", "retry", str(campaign_id)).output
    assert "2 in doubt" in cli("campaign", "status", str(campaign_id)).output
    result = cli("campaign", "retry", str(campaign_id), "--in-doubt")

    assert "2 deliveries queued again" in result.output
    assert len(smtp_server.handler.rcpt_counts) == 4
    assert state_counts(database, campaign_id) == {DeliveryState.SENT: 4}


def test_pause_then_cancel(tmp_path: Path, database: Database, smtp_server: FaultyServer) -> None:
    list_id = add_audience(database, "news", emails(5))
    campaign_id = make_campaign(database, list_id)
    config = configure(tmp_path, database, smtp_server)
    start_send(config, database, campaign_id)
    cli = Cli(tmp_path / "mailer.toml")

    assert "paused" in cli("campaign", "pause", str(campaign_id), "--reason", "wrong price").output
    assert "reason: wrong price" in cli("campaign", "status", str(campaign_id)).output
    cancelled = cli("campaign", "cancel", str(campaign_id))

    assert "5 queued messages will not be sent" in cancelled.output
    assert state_counts(database, campaign_id) == {DeliveryState.CANCELLED: 5}
    refused = cli("campaign", "resume", str(campaign_id), ok=False)
    assert refused.exit_code == 1
    assert refused.stderr.startswith(f"Error: cannot resume campaign {campaign_id}: it is cancelled")
    assert smtp_server.messages == []


def test_a_campaign_paused_by_the_marketer_mid_send_stops_after_the_batch(
    tmp_path: Path, database: Database, smtp_server: FaultyServer
) -> None:
    list_id = add_audience(database, "news", emails(200))
    campaign_id = make_campaign(database, list_id)
    config = configure(tmp_path, database, smtp_server, batch_size=10, connections=1)
    cli = Cli(tmp_path / "mailer.toml")

    def pause_on_the_fifteenth(received: Received) -> None:
        if len(smtp_server.messages) == 15:
            cli("campaign", "pause", str(campaign_id))

    smtp_server.handler.on_message = pause_on_the_fifteenth
    start_send(config, database, campaign_id)
    report = send_campaign_now(config, database, campaign_id)

    assert report.campaign_stopped
    # what was claimed (at most one batch) finished or went back to the queue; nothing more
    assert 15 <= report.sent <= 25
    counts = state_counts(database, campaign_id)
    assert counts == {DeliveryState.SENT: report.sent, DeliveryState.PENDING: 200 - report.sent}
    smtp_server.handler.on_message = None
    resumed = cli("campaign", "resume", str(campaign_id))
    assert f"{200 - report.sent} sent" in resumed.output
    assert len(smtp_server.handler.rcpt_counts) == 200 and set(smtp_server.handler.rcpt_counts.values()) == {1}


def test_a_campaign_cancelled_mid_send_leaves_nothing_queued(
    tmp_path: Path, database: Database, smtp_server: FaultyServer
) -> None:
    list_id = add_audience(database, "news", emails(200))
    smtp_server.faults.rcpt_replies["person00016@example.com"] = "451 4.3.0 greylisted, try again later"
    campaign_id = make_campaign(database, list_id)
    config = configure(tmp_path, database, smtp_server, batch_size=10, connections=1)
    cli = Cli(tmp_path / "mailer.toml")

    def cancel_on_the_fifteenth(received: Received) -> None:
        if len(smtp_server.messages) == 15:
            cli("campaign", "cancel", str(campaign_id))

    smtp_server.handler.on_message = cancel_on_the_fifteenth
    start_send(config, database, campaign_id)
    report = send_campaign_now(config, database, campaign_id)

    assert report.campaign_stopped
    # what was claimed when the cancel came either went out or is cancelled with the rest: a
    # cancelled campaign shows no message still waiting to go (nor a retry time for one)
    counts = state_counts(database, campaign_id)
    assert counts == {DeliveryState.SENT: report.sent, DeliveryState.CANCELLED: 200 - report.sent}
    status = cli("campaign", "status", str(campaign_id)).output
    assert "pending" not in status and "deferred" not in status and "next retry" not in status


def test_a_message_that_cannot_be_rendered_fails_alone(
    tmp_path: Path, database: Database, smtp_server: FaultyServer
) -> None:
    list_id = add_audience(database, "news", ["ok@example.com", "odd@example.com"])
    campaign_id = make_campaign(database, list_id)
    config = configure(tmp_path, database, smtp_server)
    start_send(config, database, campaign_id)

    async def run() -> None:
        async with CampaignSender(config, database) as sender:
            composer = sender.prepare(campaign_id)
            real_render = composer.render

            def render(recipient):  # type: ignore[no-untyped-def]
                if recipient.email == "odd@example.com":
                    from mailer.errors import TemplateError
                    raise TemplateError("'dict object' has no attribute 'city'")
                return real_render(recipient)

            composer.render = render  # type: ignore[method-assign]
            await sender.send(campaign_id, composer)

    asyncio.run(run())
    rows = delivery_states(database, campaign_id)
    assert rows["ok@example.com"].state is DeliveryState.SENT
    assert rows["odd@example.com"].state is DeliveryState.FAILED
    assert "could not render" in rows["odd@example.com"].last_response


def test_notice_audience_reaches_opted_out_people_but_not_hard_bounces(database: Database) -> None:
    list_id = add_audience(database, "news", ["ana@example.com", "left@example.com", "gone@example.com"])
    with database.session() as session:
        suppress_address(session, "left@example.com", SuppressionReason.UNSUBSCRIBED, "web")
        suppress_address(session, "gone@example.com", SuppressionReason.HARD_BOUNCE, "smtp")
    notice_id = make_campaign(database, None, subject="Changes to our terms", kind=CampaignKind.NOTICE)
    campaign_id = make_campaign(database, list_id)
    with database.session() as session:
        from mailer.lifecycle import get_campaign

        assert snapshot_audience(session, get_campaign(session, notice_id), utcnow()) == 2
        assert snapshot_audience(session, get_campaign(session, campaign_id), utcnow()) == 1
        # a second snapshot adds nobody twice
        assert snapshot_audience(session, get_campaign(session, campaign_id), utcnow()) == 0
    assert sorted(delivery_states(database, notice_id)) == ["ana@example.com", "left@example.com"]


def test_send_refuses_a_template_that_fails_for_some_subscribers_before_mailing_anyone(
    tmp_path: Path, database: Database, smtp_server: FaultyServer
) -> None:
    list_id = add_audience(database, "news", ["ana@example.com", "bo@example.com"])
    with database.session() as session:
        ana = session.scalar(sa.select(Subscriber).where(Subscriber.email_normalized == "ana@example.com"))
        assert ana is not None
        ana.attributes = {"tier": "gold"}
    campaign_id = make_campaign(database, list_id)
    with database.session() as session:
        campaign = session.get(Campaign, campaign_id)
        assert campaign is not None
        campaign.html_template = "<p>Your tier: {{ subscriber.attributes.tier }}</p>"
    cli = Cli(sending_config(tmp_path / "mailer.toml", database.url, smtp_server))

    refused = cli("campaign", "send", str(campaign_id), ok=False)

    assert refused.exit_code == 1
    assert "tier" in refused.stderr
    assert smtp_server.messages == []
    assert campaign_row(database, campaign_id).status is CampaignStatus.DRAFT


def test_a_send_started_here_is_checked_once_and_a_resumed_one_is_checked_by_the_sender(
    tmp_path: Path, database: Database, smtp_server: FaultyServer
) -> None:
    config = configure(tmp_path, database, smtp_server)
    list_id = add_audience(database, "news", emails(3))
    campaign_id = make_campaign(database, list_id)
    started = begin_send(config, database, campaign_id)
    assert started.open_deliveries == 3 and started.checked is not None
    # already sending: nothing was checked here, so the sender runs the gate itself
    assert begin_send(config, database, campaign_id).checked is None

    async def send() -> int:
        async with CampaignSender(config, database) as sender:
            return (await sender.send(campaign_id, checked=started.checked)).sent

    assert asyncio.run(send()) == 3
    assert sorted(smtp_server.handler.rcpt_counts.values()) == [1, 1, 1]
    # a checked composer never sends a campaign that is no longer sending
    with pytest.raises(DeliveryError, match="is sent, not sending"):
        CampaignSender(config, database).prepare(campaign_id, started.checked)
