"""Access, portability, rectification and erasure, end to end through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import sqlalchemy as sa
from cli_helpers import Cli, write_config
from smtp_faults import FaultyServer

from mailer.db import Database, address_hash
from mailer.models import (
    Base,
    BounceEvent,
    BounceKind,
    Campaign,
    CampaignKind,
    Delivery,
    DeliveryState,
    MailingList,
    Subscriber,
    Suppression,
    SuppressionReason,
    utcnow,
)

ANA = "Ana.Lima@example.com"


def _csv(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _add_sent_delivery(database: Database, email: str, subject: str = "November news") -> int:
    """A campaign that reached the subscriber, as the delivery engine leaves it."""
    with database.session() as session:
        subscriber = session.scalar(sa.select(Subscriber).where(Subscriber.email_normalized == email.lower()))
        assert subscriber is not None
        campaign = Campaign(kind=CampaignKind.CAMPAIGN, subject=subject, from_address="news@harmonymails.com",
                            html_template="<p>hi</p>")
        session.add(campaign)
        session.flush()
        delivery = Delivery(campaign_id=campaign.id, subscriber_id=subscriber.id, state=DeliveryState.FAILED,
                            attempts=1, last_code=550, sent_at=utcnow(),
                            last_response=f"5.1.1 <{email.lower()}>: mailbox full")
        session.add(delivery)
        session.flush()
        session.add(BounceEvent(kind=BounceKind.SOFT, delivery_id=delivery.id, campaign_id=campaign.id,
                                address_hash=address_hash(email), status="4.2.2",
                                diagnostic=f"452 4.2.2 <{email}> mailbox full"))
        return campaign.id


def _everything_stored(database: Database) -> str:
    """Every row of every table as one lower-case text, to prove an address is gone."""
    parts: list[str] = []
    with database.engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            for row in conn.execute(sa.select(table)):
                parts.append(repr(tuple(row)))
    return "\n".join(parts).lower()


def test_export_is_json_holding_the_consent_record(cli: Cli, tmp_path: Path) -> None:
    cli("list", "create", "news")
    people = _csv(tmp_path, "people.csv",
                  "email,name,city,consent_at,consent_ip,consent_source\n"
                  f"{ANA},Ana Lima,Lisbon,2024-03-01T09:30:00Z,203.0.113.7,web form 2024\n")
    cli("subscriber", "import", str(people), "--list", "news")

    data = json.loads(cli("subscriber", "export", "ana.lima@example.com").stdout)

    assert data["email"] == ANA
    assert data["profile"]["name"] == "Ana Lima"
    assert data["profile"]["attributes"] == {"city": "Lisbon"}
    (subscription,) = data["subscriptions"]
    assert subscription["list"] == "news"
    assert subscription["status"] == "active"
    assert subscription["consent"] == {
        "at": "2024-03-01T09:30:00+00:00",
        "source": "import:people.csv (web form 2024)",
        "ip": "203.0.113.7",
        "user_agent": None,
        "page": None,
        "wording": None,
    }
    assert data["suppression"] is None
    assert data["controller"]["postal_address"]


def test_subscriber_add_records_cli_consent_and_export_lists_deliveries(
    cli: Cli, database: Database
) -> None:
    cli("list", "create", "news")
    cli("subscriber", "add", ANA, "--list", "news")
    campaign_id = _add_sent_delivery(database, ANA)
    cli("suppress", "add", ANA, "--reason", "asked by phone")

    data = json.loads(cli("subscriber", "export", ANA).stdout)

    assert data["subscriptions"][0]["consent"]["source"] == "cli"
    assert data["subscriptions"][0]["consent"]["at"]
    assert data["deliveries"] == [
        {"campaign_id": campaign_id, "kind": "campaign", "subject": "November news", "state": "failed",
         "sent_at": data["deliveries"][0]["sent_at"], "queued_at": data["deliveries"][0]["queued_at"],
         "attempts": 1, "smtp_code": 550,
         "smtp_reply": "5.1.1 <ana.lima@example.com>: mailbox full"}
    ]
    assert data["deliveries"][0]["sent_at"]
    assert [(b["kind"], b["status"], b["campaign_id"]) for b in data["bounces"]] == [("soft", "4.2.2", campaign_id)]
    assert data["suppression"]["reason"] == "manual"
    assert "asked by phone" in data["suppression"]["source"]


def test_export_is_audit_logged(cli: Cli) -> None:
    cli("list", "create", "news")
    cli("subscriber", "add", ANA, "--list", "news")
    cli("subscriber", "export", ANA, "--reason", "ticket 4711")

    events = json.loads(cli("audit", "ls", "--json").stdout)

    exports = [e for e in events if e["action"] == "export"]
    assert len(exports) == 1
    assert exports[0]["subject"] == ANA
    assert exports[0]["reason"] == "ticket 4711"
    assert exports[0]["actor"].startswith("cli")


def test_export_shows_where_a_list_unsubscribe_came_from(
    cli: Cli, database: Database, config_path: Path
) -> None:
    from dataclasses import replace

    from mailer.config import UnsubscribeScope, load_config
    from mailer.recipients.optout import OptOutSource, unsubscribe
    from mailer.tokens import UnsubscribeClaim

    cli("list", "create", "news")
    cli("list", "create", "offers")
    cli("subscriber", "add", ANA, "--list", "news")
    cli("subscriber", "add", ANA, "--list", "offers")
    config = load_config(config_path, environ={})
    config = replace(config, unsubscribe=replace(config.unsubscribe, scope=UnsubscribeScope.LIST))
    with database.session() as session:
        sid = session.scalar(sa.select(Subscriber.id))
        list_id = session.scalar(sa.select(MailingList.id).where(MailingList.name == "offers"))
        assert sid is not None and list_id is not None
        unsubscribe(session, config, UnsubscribeClaim(sid, list_id, None), OptOutSource.PAGE,
                    ip="198.51.100.9", user_agent="Mozilla/5.0 (Ana's phone)")

    data = json.loads(cli("subscriber", "export", ANA).stdout)

    # leaving one list makes no suppression: the trail is the only place the click is recorded
    assert data["suppression"] is None
    (event,) = [e for e in data["audit_events"] if e["action"] == "unsubscribe"]
    assert event["detail"]["ip"] == "198.51.100.9"
    assert event["detail"]["user_agent"] == "Mozilla/5.0 (Ana's phone)"


def test_export_of_an_unknown_address_is_one_clear_line(cli: Cli) -> None:
    result = cli("subscriber", "export", "nobody@example.com", ok=False)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == ["Error: nothing is held about 'nobody@example.com'"]


def test_update_rectifies_address_name_and_attributes(cli: Cli) -> None:
    cli("list", "create", "news")
    cli("subscriber", "add", "ana@exmaple.com", "--list", "news", "--name", "Ana L", "--attr", "city=Lisbon",
        "--attr", "shoe=38")

    out = cli("subscriber", "update", "ana@exmaple.com", "--email", "ana@example.com", "--name", "Ana Lima",
              "--attr", "city=Porto", "--attr", "shoe=").stdout

    assert out.startswith("updated ana@example.com: ")
    # the old address finds nobody any more
    assert cli("subscriber", "show", "ana@exmaple.com", ok=False).stderr == (
        "Error: no subscriber with address 'ana@exmaple.com'\n")
    data = json.loads(cli("subscriber", "show", "ana@example.com", "--json").stdout)
    assert data["name"] == "Ana Lima"
    assert data["attributes"] == {"city": "Porto"}
    assert data["subscriptions"][0]["list"] == "news"
    (event,) = [e for e in json.loads(cli("audit", "ls", "--json").stdout) if e["action"] == "rectify"]
    assert event["subject"] == "ana@example.com"
    assert event["detail"]["previous_address_hash"] == address_hash("ana@exmaple.com")
    assert "ana@exmaple.com" not in json.dumps(event)


def test_update_refuses_a_suppressed_or_taken_address_and_line_breaks(cli: Cli) -> None:
    cli("list", "create", "news")
    cli("subscriber", "add", ANA, "--list", "news")
    cli("subscriber", "add", "bo@example.com", "--list", "news")
    cli("suppress", "add", "gone@example.com")

    suppressed = cli("subscriber", "update", ANA, "--email", "gone@example.com", ok=False)
    taken = cli("subscriber", "update", ANA, "--email", "BO@example.com", ok=False)
    crlf = cli("subscriber", "update", ANA, "--name", "Ana\r\nBcc: x@evil.test", ok=False)
    crlf_email = cli("subscriber", "update", ANA, "--email", "a@example.com\r\nBcc: x@evil.test", ok=False)

    for result in (suppressed, taken, crlf, crlf_email):
        assert result.exit_code == 1
        assert len(result.stderr.strip().splitlines()) == 1
    assert "suppression list" in suppressed.stderr
    assert "already another subscriber's address" in taken.stderr
    assert "line breaks" in crlf.stderr
    assert json.loads(cli("subscriber", "show", ANA, "--json").stdout)["name"] == ""


def test_a_new_address_for_someone_who_opted_out_stays_suppressed(cli: Cli, database: Database) -> None:
    cli("list", "create", "news")
    cli("subscriber", "add", ANA, "--list", "news")
    cli("suppress", "add", ANA)

    out = cli("subscriber", "update", ANA, "--email", "ana@example.org").stdout

    assert "stays suppressed" in out
    with database.session() as session:
        assert session.scalar(sa.select(Suppression).where(
            Suppression.address_hash == address_hash("ana@example.org"))) is not None
    # the suppression the new address got is a suppression change: the trail says so
    (event,) = [e for e in json.loads(cli("audit", "ls", "--json").stdout) if e["action"] == "rectify"]
    assert event["detail"]["suppressed"] == "manual"

    # erasing her later leaves neither address in the clear, and both stay unmailable
    cli("subscriber", "forget", "ana@example.org", "--yes")
    stored = _everything_stored(database)
    assert "ana.lima@example.com" not in stored and "ana@example.org" not in stored
    for address in (ANA, "ana@example.org"):
        refused = cli("subscriber", "add", address, "--list", "news", ok=False)
        assert refused.exit_code == 1 and "suppression list" in refused.stderr


def test_correcting_an_address_that_hard_bounced_makes_the_person_mailable_again(
    cli: Cli, database: Database
) -> None:
    from mailer.recipients.suppression import suppress_address

    cli("list", "create", "news")
    cli("subscriber", "add", "ana@exmaple.com", "--list", "news")
    with database.session() as session:  # the typo's mailbox does not exist, as the relay said
        suppress_address(session, "ana@exmaple.com", SuppressionReason.HARD_BOUNCE, source="smtp 550")

    out = cli("subscriber", "update", "ana@exmaple.com", "--email", "ana@example.com").stdout

    # a bounce belongs to the mistyped mailbox, not to the person: the corrected one is not suppressed
    assert "stays suppressed" not in out
    assert [row["email"] for row in json.loads(cli("subscriber", "ls", "--list", "news", "--json").stdout)] == [
        "ana@example.com"]
    with database.session() as session:
        assert session.scalar(sa.select(Suppression).where(
            Suppression.address_hash == address_hash("ana@example.com"))) is None


def test_forget_erases_everything_and_reimport_is_refused(
    cli: Cli, database: Database, tmp_path: Path
) -> None:
    cli("list", "create", "news")
    cli("list", "create", "offers")
    people = _csv(tmp_path, "people.csv",
                  "email,name,city,consent_ip,consent_source\n"
                  f"{ANA},Ana Lima,Lisbon,203.0.113.7,web form\n"
                  "bo@example.com,Bo,Oslo,,\n")
    cli("subscriber", "import", str(people), "--list", "news")
    cli("subscriber", "add", ANA, "--list", "offers")
    campaign_id = _add_sent_delivery(database, ANA)
    cli("subscriber", "export", ANA)

    out = cli("subscriber", "forget", "ana.lima@example.com", "--yes").stdout

    assert "profile: name and 1 attribute" in out
    assert "news, offers" in out
    assert "address removed from 1 deliveries" in out
    assert "suppression added as hash only" in out
    stored = _everything_stored(database)
    for trace in ("ana.lima@example.com", "ana lima", "lisbon", "203.0.113.7", "web form"):
        assert trace not in stored, trace
    assert "bo@example.com" in stored  # nobody else was touched
    with database.session() as session:
        # the campaign keeps its count; the row no longer says whose it was
        deliveries = session.scalars(sa.select(Delivery).where(Delivery.campaign_id == campaign_id)).all()
        assert [(d.subscriber_id, d.state) for d in deliveries] == [(None, DeliveryState.FAILED)]
        entry = session.scalar(sa.select(Suppression).where(Suppression.address_hash == address_hash(ANA)))
        assert entry is not None and entry.email is None and entry.reason is SuppressionReason.ERASED
        # the soft-bounce count survives under the hash; the server's words no longer name her
        (bounce,) = session.scalars(sa.select(BounceEvent)).all()
        assert bounce.address_hash == address_hash(ANA) and "[erased]" in bounce.diagnostic

    again = cli("subscriber", "import", str(people), "--list", "news", "--json").stdout
    report = json.loads(again)
    assert report["skipped_suppressed"] == 1
    assert report["added"] == 0
    refused = cli("subscriber", "add", ANA, "--list", "news", ok=False)
    assert refused.exit_code == 1 and "suppression list" in refused.stderr
    assert cli("subscriber", "show", ANA, ok=False).stderr == f"Error: no subscriber with address {ANA!r}\n"
    # asking what is held about her now answers "only a hash", and writes her address nowhere
    after = json.loads(cli("subscriber", "export", ANA).stdout)
    assert after["profile"] is None and after["suppression"]["reason"] == "erased"
    assert ANA.lower() not in _everything_stored(database)

    erase_events = [e for e in json.loads(cli("audit", "ls", "--json").stdout) if e["action"] == "erase"]
    assert len(erase_events) == 1
    assert erase_events[0]["subject"] == address_hash(ANA)


def test_forget_after_a_correction_leaves_the_earlier_address_nowhere(cli: Cli, database: Database) -> None:
    from mailer.audit import record_event

    cli("list", "create", "news")
    cli("subscriber", "add", "ana@exmaple.com", "--list", "news")
    # the typo bounced: the relay's reply, the bounce report and the trail all quote it
    _add_sent_delivery(database, "ana@exmaple.com")
    with database.session() as session:
        record_event(session, "suppress", "mailer", subject="ana@exmaple.com",
                     reason="hard bounce: 550 5.1.1 <ana@exmaple.com>: no such user")
    cli("subscriber", "update", "ana@exmaple.com", "--email", "ana@example.com")

    cli("subscriber", "forget", "ana@example.com", "--yes")

    stored = _everything_stored(database)
    assert "ana@exmaple.com" not in stored
    assert "ana@example.com" not in stored


def test_forget_replaces_an_unsubscribe_with_a_hash_and_pseudonymizes_the_trail(
    cli: Cli, database: Database, config_path: Path
) -> None:
    from mailer.config import load_config
    from mailer.recipients.optout import OptOutSource, unsubscribe
    from mailer.tokens import UnsubscribeClaim

    cli("list", "create", "news")
    cli("subscriber", "add", ANA, "--list", "news")
    config = load_config(config_path, environ={})
    with database.session() as session:
        sid = session.scalar(sa.select(Subscriber.id))
        assert sid is not None
        unsubscribe(session, config, UnsubscribeClaim(sid, None, None), OptOutSource.PAGE,
                    ip="198.51.100.9", user_agent="Mozilla/5.0 (Ana's phone)")

    out = cli("subscriber", "forget", ANA, "--yes").stdout

    assert "suppression kept as hash only" in out
    assert "earlier audit events now name only the hash" in out
    stored = _everything_stored(database)
    for trace in ("ana.lima@example.com", "198.51.100.9", "ana's phone"):
        assert trace not in stored, trace
    events = json.loads(cli("audit", "ls", "--json").stdout)
    assert [e["action"] for e in events] == ["unsubscribe", "erase"]
    assert {e["subject"] for e in events} == {address_hash(ANA)}
    listed = cli("suppress", "ls").stdout
    assert "(erased)" in listed and "erased" in listed


def test_an_export_after_erasure_lists_the_events_kept_under_the_hash(cli: Cli) -> None:
    cli("list", "create", "news")
    cli("subscriber", "add", ANA, "--list", "news")
    cli("suppress", "add", ANA, "--reason", "asked by phone")
    cli("subscriber", "forget", ANA, "--yes", "--reason", "ticket 4712")

    data = json.loads(cli("subscriber", "export", ANA).stdout)

    # the trail still holds these about her, pseudonymized: an access request must show them
    assert [(e["action"], e["reason"]) for e in data["audit_events"]] == [
        ("suppress", "asked by phone"), ("erase", "ticket 4712")]


def test_forget_asks_first_and_changes_nothing_when_declined(cli: Cli) -> None:
    cli("list", "create", "news")
    cli("subscriber", "add", ANA, "--list", "news")

    declined = cli("subscriber", "forget", ANA, input="n\n", ok=False)

    assert declined.exit_code == 1
    assert "This cannot be undone" in declined.output
    assert json.loads(cli("subscriber", "show", ANA, "--json").stdout)["email"] == ANA
    accepted = cli("subscriber", "forget", ANA, input="y\n")
    assert "erased" in accepted.stdout


def test_forget_of_an_unknown_address_is_refused(cli: Cli) -> None:
    result = cli("subscriber", "forget", "nobody@example.com", "--yes", ok=False)
    assert result.exit_code == 1
    assert "nothing is held" in result.stderr


def test_every_privacy_command_has_help_with_an_example(cli: Cli) -> None:
    for args in (("subscriber", "export"), ("subscriber", "update"), ("subscriber", "forget"),
                 ("audit", "ls")):
        assert "Example:" in cli(*args, "--help").stdout


def test_an_address_erased_mid_campaign_is_never_mailed(
    tmp_path: Path, database: Database, smtp_server: FaultyServer
) -> None:
    from mailer.config import load_config
    from mailer.lifecycle import start_send

    cli = Cli(write_config(tmp_path / "smtp.toml", database.url, smtp_server))
    cli("list", "create", "news")
    for address in (ANA, "bo@example.com"):
        cli("subscriber", "add", address, "--list", "news")
    campaign_id = cli("campaign", "create", "--list", "news", "--subject", "Summer concerts",
                      "--template", "announcement").stdout.strip()
    # the audience is snapshotted with Ana in it, then she is erased before her turn
    assert start_send(load_config(cli.config_path, environ={}), database, int(campaign_id)) == 2
    cli("subscriber", "forget", ANA, "--yes")

    out = cli("campaign", "send", campaign_id).stdout

    assert [m.rcpt_tos for m in smtp_server.messages] == [["bo@example.com"]]
    assert "1 sent" in out and "1 suppressed" in out
    assert ANA.lower() not in _everything_stored(database)


def test_subscriber_ls_never_lists_opted_out_addresses(cli: Cli, database: Database, config_path: Path) -> None:
    from mailer.config import load_config
    from mailer.recipients.optout import OptOutSource, unsubscribe
    from mailer.tokens import UnsubscribeClaim

    cli("list", "create", "news")
    for address in (ANA, "bo@example.com", "cy@example.com"):
        cli("subscriber", "add", address, "--list", "news")
    cli("suppress", "add", "bo@example.com")
    with database.session() as session:
        cy = session.scalar(sa.select(Subscriber.id).where(Subscriber.email == "cy@example.com"))
        assert cy is not None
        unsubscribe(session, load_config(config_path, environ={}), UnsubscribeClaim(cy, None, None),
                    OptOutSource.ONE_CLICK)

    listed = json.loads(cli("subscriber", "ls", "--list", "news", "--json").stdout)
    text = cli("subscriber", "ls", "--list", "news")

    assert [row["email"] for row in listed] == [ANA]
    assert text.stdout.splitlines() == [f"{ANA}  active"]
    assert "2 opted-out members not listed" in text.stderr
    # one person's own record stays available to them (access request)
    assert json.loads(cli("subscriber", "show", "bo@example.com", "--json").stdout)["suppression"]
