"""Policy blocks (5.7.x): the delivery fails, nobody is suppressed, the campaign counts them and pauses on a share."""

from __future__ import annotations

import io
import json
import mailbox
import re
from pathlib import Path

import pytest
import sqlalchemy as sa
from cli_helpers import Cli
from sending_helpers import (
    add_audience,
    campaign_row,
    delivery_states,
    emails,
    make_campaign,
    sending_config,
    state_counts,
)
from smtp_faults import FaultyServer

from mailer.config import load_config
from mailer.db import Database
from mailer.delivery.pipeline import send_campaign_now
from mailer.errors import ConfigError
from mailer.inbound.process import InboundKind, process_inbound
from mailer.lifecycle import start_send
from mailer.models import (
    BounceEvent,
    BounceKind,
    CampaignStatus,
    Delivery,
    DeliveryState,
    Suppression,
    SuppressionReason,
    utcnow,
)
from mailer.verp import make_return_path

FIXTURES = Path(__file__).parent / "fixtures" / "inbound"
SPAMHAUS = ("554 5.7.1 Service unavailable; Client host [203.0.113.5] blocked using zen.spamhaus.org; "
            "https://www.spamhaus.org/query/ip/203.0.113.5")
POLICY_DSNS = ["postfix_spamhaus_block", "gmail_dmarc_rejection", "outlook_ip_blocked"]


def suppressed(database: Database) -> dict[str, SuppressionReason]:
    with database.session() as session:
        return {str(email): reason for email, reason in
                session.execute(sa.select(Suppression.email, Suppression.reason)).all()}


def policy_events(database: Database, campaign_id: int) -> list[BounceEvent]:
    with database.session() as session:
        events = list(session.scalars(sa.select(BounceEvent).where(
            BounceEvent.campaign_id == campaign_id, BounceEvent.kind == BounceKind.POLICY)))
        session.expunge_all()
        return events


def test_a_blocklisted_relay_fails_deliveries_suppresses_nobody_and_pauses_the_campaign(
    tmp_path: Path, database: Database, smtp_server: FaultyServer
) -> None:
    addresses = emails(40)
    list_id = add_audience(database, "news", addresses)
    smtp_server.faults.rcpt_replies.update({address: SPAMHAUS for address in addresses})
    campaign_id = make_campaign(database, list_id)
    config_path = sending_config(tmp_path / "mailer.toml", database.url, smtp_server, connections=1, batch_size=4,
                                 extra="policy_block_pause_share = 0.5\npolicy_block_pause_min = 10\n")
    cli = Cli(config_path)

    result = cli("campaign", "send", str(campaign_id), ok=False)

    assert result.exit_code == 1
    assert f"campaign {campaign_id} paused: " in result.stderr
    assert "deliveries were refused by policy (e.g. 554 5.7.1 Service unavailable" in result.stderr
    assert "zen.spamhaus.org" in result.stderr and "SPF, DKIM, DMARC" in result.stderr
    assert f"`mailer campaign resume {campaign_id}`" in result.stderr
    counts = state_counts(database, campaign_id)
    # paused soon after the tenth refusal, long before the whole list was refused
    assert 10 <= counts[DeliveryState.FAILED] < 20
    assert counts[DeliveryState.PENDING] == 40 - counts[DeliveryState.FAILED]
    assert suppressed(database) == {}
    row = campaign_row(database, campaign_id)
    assert row.status is CampaignStatus.PAUSED
    # the reason tells what was known when it paused; messages in flight finished after that
    assert re.match(r"(1[0-9]) of \1 deliveries were refused by policy", row.status_reason), row.status_reason

    status = cli("campaign", "status", str(campaign_id)).output
    assert f"policy blocks: {counts[DeliveryState.FAILED]} " in status
    assert "nobody suppressed" in status and "reason: " in status
    as_json = json.loads(cli("campaign", "status", str(campaign_id), "--json").output)
    assert as_json["policy_blocks"] == counts[DeliveryState.FAILED]
    assert as_json["status"] == "paused"

    # delisted: resume sends the rest, and the blocks that paused it do not pause it again
    smtp_server.faults.rcpt_replies.clear()
    resumed = cli("campaign", "resume", str(campaign_id)).output
    assert "status: sent" in resumed
    assert len(smtp_server.messages) == 40 - counts[DeliveryState.FAILED]
    assert suppressed(database) == {}


def test_refused_at_end_of_data_by_policy_fails_without_suppressing_and_5_1_1_still_suppresses(
    tmp_path: Path, database: Database, smtp_server: FaultyServer
) -> None:
    list_id = add_audience(database, "news", ["ana@example.com", "bo@example.com", "gone@example.com"])
    smtp_server.faults.rcpt_replies["gone@example.com"] = "550 5.1.1 <gone@example.com>: Recipient address rejected: User unknown"
    smtp_server.faults.data_reply = "550 5.7.1 Message rejected due to policy: DMARC check failed for harmonymails.com"
    campaign_id = make_campaign(database, list_id)
    config = load_config(sending_config(tmp_path / "mailer.toml", database.url, smtp_server), environ={})
    start_send(config, database, campaign_id)

    report = send_campaign_now(config, database, campaign_id)

    assert (report.sent, report.failed, report.hard_bounces, report.policy_blocks) == (0, 3, 1, 2)
    assert report.paused_reason == ""  # 3 tried: fewer than sending.policy_block_pause_min
    rows = delivery_states(database, campaign_id)
    assert {address: row.state for address, row in rows.items()} == dict.fromkeys(rows, DeliveryState.FAILED)
    assert "DMARC check failed" in rows["ana@example.com"].last_response
    assert suppressed(database) == {"gone@example.com": SuppressionReason.HARD_BOUNCE}
    assert sorted(e.status for e in policy_events(database, campaign_id)) == ["5.7.1", "5.7.1"]
    assert campaign_row(database, campaign_id).status is CampaignStatus.SENT


class Sent:
    """A campaign still sending whose first deliveries went out: the DSNs come back for them."""

    def __init__(self, database: Database, count: int) -> None:
        self.addresses = emails(count)
        list_id = add_audience(database, "news", self.addresses)
        self.campaign_id = make_campaign(database, list_id, status=CampaignStatus.SENDING)
        with database.session() as session:
            people = dict(session.execute(sa.text(
                "SELECT email_normalized, id FROM subscribers")).all())
            self.deliveries = {}
            for address in self.addresses:
                delivery = Delivery(campaign_id=self.campaign_id, subscriber_id=people[address],
                                    state=DeliveryState.SENT, attempts=1, last_code=250, sent_at=utcnow())
                session.add(delivery)
                session.flush()
                self.deliveries[address] = delivery.id


def dsn(name: str, config_path: Path, address: str, delivery_id: int) -> bytes:
    config = load_config(config_path, environ={})
    text = (FIXTURES / f"{name}.eml").read_text(encoding="utf-8")
    text = (text.replace("{{VERP}}", make_return_path(config, delivery_id)).replace("{{RCPT}}", address)
                .replace("{{TOKEN}}", "no-token-here"))
    return text.encode("utf-8")


def test_policy_dsns_fail_the_delivery_are_counted_and_suppress_nobody(
    tmp_path: Path, database: Database, cli: Cli, config_path: Path
) -> None:
    sent = Sent(database, 30)
    maildir = mailbox.Maildir(tmp_path / "Maildir", create=True)
    for name, address in zip(POLICY_DSNS, sent.addresses, strict=False):
        maildir.add(dsn(name, config_path, address, sent.deliveries[address]))

    summary = cli("inbound", "process", str(tmp_path / "Maildir")).output

    assert "policy blocks: 3\n" in summary
    assert "hard bounces: 0\n" in summary and "soft bounces: 0\n" in summary
    assert suppressed(database) == {}
    rows = delivery_states(database, sent.campaign_id)
    assert [rows[a].state for a in sent.addresses[:3]] == [DeliveryState.FAILED] * 3
    assert "blocked using zen.spamhaus.org" in rows[sent.addresses[0]].last_response
    assert sorted(e.status for e in policy_events(database, sent.campaign_id)) == ["5.7.1", "5.7.26", "5.7.708"]
    status = json.loads(cli("campaign", "status", str(sent.campaign_id), "--json").output)
    assert status["policy_blocks"] == 3
    # the second of 30 tried passed the default share of 5 % (after at least 20 tried)
    assert status["status"] == "paused"
    assert status["reason"].startswith("2 of 30 deliveries were refused by policy (e.g. 550-5.7.26 "
                                       "Unauthenticated email"), status["reason"]

    # the same mail arriving again (a second copy, or a run over a restored Maildir) acts once
    for seen in (tmp_path / "Maildir" / "cur").iterdir():
        seen.rename(tmp_path / "Maildir" / "new" / seen.name.partition(":")[0])
    again = cli("inbound", "process", str(tmp_path / "Maildir")).output
    assert "already processed: 3\n" in again
    assert len(policy_events(database, sent.campaign_id)) == 3


def test_a_policy_dsn_under_the_share_leaves_the_campaign_sending(
    database: Database, config_path: Path
) -> None:
    sent = Sent(database, 40)
    config = load_config(config_path, environ={})
    address = sent.addresses[0]
    report = process_inbound(database, config, io.BytesIO(dsn("postfix_spamhaus_block", config_path, address,
                                                           sent.deliveries[address])))
    [item] = report.items
    assert item.kind is InboundKind.POLICY_BLOCK
    assert "not suppressed" in item.note and "paused" not in item.note
    assert campaign_row(database, sent.campaign_id).status is CampaignStatus.SENDING


def test_a_delay_warning_is_listed_as_such_not_as_a_soft_bounce(
    database: Database, cli: Cli, config_path: Path, tmp_path: Path
) -> None:
    sent = Sent(database, 1)
    address = sent.addresses[0]
    raw = (FIXTURES / "postfix_delayed.eml").read_text(encoding="utf-8")
    config = load_config(config_path, environ={})
    raw = (raw.replace("{{VERP}}", make_return_path(config, sent.deliveries[address]))
              .replace("{{RCPT}}", address).replace("{{TOKEN}}", "no-token-here"))
    path = tmp_path / "delayed.eml"
    path.write_text(raw, encoding="utf-8")

    summary = cli("inbound", "process", str(path)).output

    assert "delay warnings: 1\n" in summary
    assert "soft bounces: 0\n" in summary


@pytest.mark.parametrize(("key", "value"), [("policy_block_pause_share", "1.5"),
                                            ("policy_block_pause_share", "-0.1"),
                                            ("policy_block_pause_min", "0")])
def test_pause_settings_out_of_range_are_refused(tmp_path: Path, key: str, value: str) -> None:
    path = tmp_path / "mailer.toml"
    path.write_text(f"[sending]\n{key} = {value}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=f"sending.{key}"):
        load_config(path, environ={})



def test_a_classic_bounce_without_a_delivery_status_part_is_classified_by_the_servers_words(
    database: Database, config_path: Path
) -> None:
    sent = Sent(database, 2)
    config = load_config(config_path, environ={})
    blocked, gone = sent.addresses
    policy = dsn("exim_classic_bounce", config_path, blocked, sent.deliveries[blocked]).replace(
        f"550 5.1.1 <{blocked}>: mailbox unavailable".encode(),
        b"550 5.7.1 Client host [203.0.113.5] blocked using zen.spamhaus.org").replace(
        b"Message-Id: <", b"Message-Id: <policy.")
    [item] = process_inbound(database, config, io.BytesIO(policy)).items
    assert item.kind is InboundKind.POLICY_BLOCK, item.note
    [item] = process_inbound(database, config, io.BytesIO(
        dsn("exim_classic_bounce", config_path, gone, sent.deliveries[gone]))).items
    assert item.kind is InboundKind.HARD_BOUNCE, item.note
    assert suppressed(database) == {gone: SuppressionReason.HARD_BOUNCE}


def test_a_pause_reason_never_keeps_who_the_server_quoted_and_erasure_scrubs_it(
    tmp_path: Path, database: Database, cli: Cli, config_path: Path
) -> None:
    sent = Sent(database, 20)
    victim = sent.addresses[0]
    with database.session() as session:
        session.execute(sa.text("UPDATE subscribers SET name = 'Bo Lindqvist' WHERE email_normalized = :e"),
                        {"e": victim})
    quoted = dsn("postfix_spamhaus_block", config_path, victim, sent.deliveries[victim]).decode().replace(
        "Diagnostic-Code: smtp; 554 5.7.1 Service unavailable;",
        f"Diagnostic-Code: smtp; 554 5.7.1 <{victim}> (Bo Lindqvist) Service unavailable;")
    cli("inbound", "process", "-", input=quoted)

    status = json.loads(cli("campaign", "status", str(sent.campaign_id), "--json").output)
    assert status["status"] == "paused"
    assert "<recipient> (Bo Lindqvist)" in status["reason"] and victim not in status["reason"]

    cli("subscriber", "forget", victim, "--yes")
    with database.session() as session:
        kept = [str(r) for r in session.scalars(sa.text(
            "SELECT status_reason FROM campaigns UNION ALL SELECT reason FROM audit_events "
            "WHERE action LIKE 'campaign%'"))]
    assert any("blocked using zen.spamhaus.org" in text for text in kept)
    assert not any("Lindqvist" in text or victim in text for text in kept), kept


@pytest.mark.parametrize(("diagnostic", "summary_line"), [
    # Exim writes Status: 5.0.0 for every failure; the 5.7.1 the receiver said is what counts
    ("550 5.7.1 Unable to relay: invalid recipient for this sending host", "policy blocks: 1\n"),
    ("550 5.7.1 <news@harmonymails.com>: Sender address rejected: user unknown in local recipient table",
     "policy blocks: 1\n"),
    # without an enhanced code, a refusal of our own sender is no gone mailbox either
    ("550 <news@harmonymails.com>: Sender address rejected: user unknown in local recipient table",
     "soft bounces: 1\n"),
])
def test_an_exim_dsn_with_status_5_0_0_is_read_by_the_receivers_own_code_and_suppresses_nobody(
    tmp_path: Path, database: Database, cli: Cli, config_path: Path, diagnostic: str, summary_line: str
) -> None:
    sent = Sent(database, 1)
    [address] = sent.addresses
    raw = dsn("exim_status_5_0_0_policy_block", config_path, address, sent.deliveries[address])
    path = tmp_path / "dsn.eml"
    path.write_bytes(raw.replace(b"550 5.7.1 Unable to relay: invalid recipient for this sending host",
                                 diagnostic.encode()))

    summary = cli("inbound", "process", str(path)).output

    assert summary_line in summary and "hard bounces: 0\n" in summary, summary
    assert suppressed(database) == {}
    assert address not in cli("suppress", "ls").output
    assert delivery_states(database, sent.campaign_id)[address].state is DeliveryState.FAILED
