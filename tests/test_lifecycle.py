"""Campaign state changes: each allowed from some states, refused from the rest in one line,
audited once, and one home for all of them."""

from __future__ import annotations

import ast
import datetime as dt
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sending_helpers import add_audience, campaign_row, make_campaign
from sqlalchemy.orm import Session

from mailer import lifecycle
from mailer.db import Database
from mailer.errors import DeliveryError
from mailer.models import AuditEvent, CampaignStatus, Delivery, DeliveryState, Subscriber, utcnow

S = CampaignStatus
EVERY_STATUS = list(CampaignStatus)
LATER = dt.datetime(2099, 1, 1, 9, 0, tzinfo=dt.UTC)

# each transition: how it is called, the states it moves from, where it leaves the campaign, its audit action
Call = Callable[[Session, int], Any]
TRANSITIONS: dict[str, tuple[Call, set[CampaignStatus], CampaignStatus, str]] = {
    "start": (lambda s, c: lifecycle.start_campaign(s, c), {S.DRAFT, S.SCHEDULED}, S.SENDING,
              "campaign_started"),
    "schedule": (lambda s, c: lifecycle.schedule_campaign(s, c, LATER), {S.DRAFT, S.SCHEDULED, S.MISSED},
                 S.SCHEDULED, "campaign_scheduled"),
    "pause": (lambda s, c: lifecycle.pause_campaign(s, c, "wrong price"), {S.SENDING}, S.PAUSED,
              "campaign_paused"),
    "resume": (lambda s, c: lifecycle.resume_campaign(s, c), {S.PAUSED}, S.SENDING, "campaign_resumed"),
    "cancel": (lambda s, c: lifecycle.cancel_campaign(s, c, "wrong list"),
               {S.DRAFT, S.SCHEDULED, S.SENDING, S.PAUSED}, S.CANCELLED, "campaign_cancelled"),
}
# the mailer's own transitions answer whether they moved the campaign instead of refusing
SELF_TRANSITIONS: dict[str, tuple[Call, CampaignStatus, CampaignStatus, str]] = {
    "pause on failure": (lambda s, c: lifecycle.pause_on_failure(s, c, "the relay keeps failing"),
                         S.SENDING, S.PAUSED, "campaign_paused"),
    "finish": (lambda s, c: lifecycle.finish_if_done(s, c), S.SENDING, S.SENT, "campaign_sent"),
    "missed": (lambda s, c: lifecycle.mark_missed(s, c, "its time passed long ago"), S.SCHEDULED, S.MISSED,
               "campaign_missed"),
}


def _campaigns_in_every_status(database: Database) -> dict[CampaignStatus, int]:
    return {status: make_campaign(database, None, status=status) for status in EVERY_STATUS}


def _events(database: Database) -> list[AuditEvent]:
    with database.session() as session:
        events = list(session.scalars(sa.select(AuditEvent).order_by(AuditEvent.id)))
        session.expunge_all()
    return events


@pytest.mark.parametrize("name", list(TRANSITIONS))
def test_a_command_moves_only_from_its_states_and_refuses_the_rest_in_one_line(
    database: Database, name: str
) -> None:
    call, allowed, target, action = TRANSITIONS[name]
    campaigns = _campaigns_in_every_status(database)

    for status, campaign_id in campaigns.items():
        before = len(_events(database))
        if status in allowed:
            with database.session() as session:
                call(session, campaign_id)
            assert campaign_row(database, campaign_id).status is target, status
            (event,) = _events(database)[before:]
            assert event.action == action
            assert event.subject == f"campaign {campaign_id}"
            assert event.detail["from"] == status.value and event.detail["to"] == target.value
            assert event.actor.startswith("cli")
        elif name == "start" and status is S.SENDING:
            with database.session() as session:
                assert call(session, campaign_id) is None  # already going: another sender started it
            assert len(_events(database)) == before
        else:
            with pytest.raises(DeliveryError) as refused, database.session() as session:
                call(session, campaign_id)
            message = str(refused.value)
            assert "\n" not in message
            verb = "send" if name == "start" else name
            assert message.startswith(f"cannot {verb} campaign {campaign_id}: it is {status.value}")
            assert campaign_row(database, campaign_id).status is status
            assert len(_events(database)) == before


@pytest.mark.parametrize("name", list(SELF_TRANSITIONS))
def test_the_mailer_moves_a_campaign_only_from_one_state_and_leaves_the_rest_alone(
    database: Database, name: str
) -> None:
    call, source, target, action = SELF_TRANSITIONS[name]
    campaigns = _campaigns_in_every_status(database)

    for status, campaign_id in campaigns.items():
        before = len(_events(database))
        with database.session() as session:
            moved = call(session, campaign_id)
        assert moved is (status is source), status
        assert campaign_row(database, campaign_id).status is (target if status is source else status)
        new_events = _events(database)[before:]
        if status is source:
            (event,) = new_events
            assert (event.action, event.actor, event.subject) == (action, "mailer", f"campaign {campaign_id}")
            assert event.detail["from"] == source.value and event.detail["to"] == target.value
            assert event.reason
        else:
            assert new_events == []


def test_a_campaign_with_deliveries_still_open_is_not_finished(database: Database) -> None:
    list_id = add_audience(database, "news", ["ana@example.com"])
    campaign_id = make_campaign(database, list_id)
    with database.session() as session:
        lifecycle.start_campaign(session, campaign_id)

    with database.session() as session:
        assert lifecycle.finish_if_done(session, campaign_id) is False

    assert campaign_row(database, campaign_id).status is S.SENDING
    assert [e.action for e in _events(database)] == ["campaign_started"]
    assert _events(database)[0].detail["recipients"] == 1


def test_retry_reopens_a_sent_campaign_once_and_refuses_one_that_never_went_out(database: Database) -> None:
    list_id = add_audience(database, "news", ["ana@example.com", "bo@example.com"])
    campaigns = {status: make_campaign(database, list_id, status=status) for status in EVERY_STATUS}
    with database.session() as session:
        subscriber_ids = list(session.scalars(sa.select(Subscriber.id)))
        for campaign_id in campaigns.values():
            for subscriber_id in subscriber_ids:
                session.add(Delivery(campaign_id=campaign_id, subscriber_id=subscriber_id,
                                     state=DeliveryState.FAILED, attempts=1, last_response="550 no",
                                     created_at=utcnow(), updated_at=utcnow()))

    for status, campaign_id in campaigns.items():
        before = len(_events(database))
        if status in (S.SENDING, S.SENT, S.PAUSED):
            with database.session() as session:
                assert lifecycle.retry_campaign(session, campaign_id) == 2
            after = campaign_row(database, campaign_id)
            new_events = _events(database)[before:]
            if status is S.SENT:
                assert after.status is S.SENDING and after.finished_at is None
                (event,) = new_events
                assert (event.action, event.detail["requeued"]) == ("campaign_retried", 2)
            else:
                assert after.status is status and new_events == []  # no change of state, nothing to record
        else:
            with pytest.raises(DeliveryError, match=f"^cannot retry campaign {campaign_id}: it is"), \
                    database.session() as session:
                lifecycle.retry_campaign(session, campaign_id)
            assert len(_events(database)) == before


def test_cancel_records_how_many_queued_deliveries_it_stopped(database: Database) -> None:
    list_id = add_audience(database, "news", ["ana@example.com", "bo@example.com", "cy@example.com"])
    campaign_id = make_campaign(database, list_id)
    with database.session() as session:
        lifecycle.start_campaign(session, campaign_id)

    with database.session() as session:
        assert lifecycle.cancel_campaign(session, campaign_id, "wrong list") == 3

    event = _events(database)[-1]
    assert (event.action, event.reason, event.detail["deliveries_cancelled"]) == (
        "campaign_cancelled", "wrong list", 3)


def _race(database: Database, first: Call, second: Call, campaign_id: int) -> list[Any]:
    """`second` starts while `first` has changed the row and not committed; returns both results
    (an exception counts as a result)."""
    results: list[Any] = [None, None]

    def run_second() -> None:
        try:
            with database.session() as session:
                results[1] = second(session, campaign_id)
        except DeliveryError as exc:
            results[1] = exc

    with database.session() as session:
        results[0] = first(session, campaign_id)
        other = threading.Thread(target=run_second)
        other.start()
        time.sleep(0.5)  # let the second reach the row this transaction holds
    other.join(timeout=30)
    assert not other.is_alive()
    return results


@pytest.mark.parametrize("name", ["pause on failure", "finish"])
def test_two_senders_racing_for_the_same_change_make_it_and_record_it_once(
    postgres_url: str, name: str
) -> None:
    database = Database(postgres_url)
    database.upgrade()
    try:
        call, source, target, action = SELF_TRANSITIONS[name]
        campaign_id = make_campaign(database, None, status=source)

        results = _race(database, call, call, campaign_id)

        assert sorted(results) == [False, True]
        assert campaign_row(database, campaign_id).status is target
        assert [e.action for e in _events(database)] == [action]
    finally:
        database.dispose()


def test_two_marketers_pausing_at_once_pause_it_once_and_the_second_is_told_why(postgres_url: str) -> None:
    database = Database(postgres_url)
    database.upgrade()
    try:
        campaign_id = make_campaign(database, None, status=S.SENDING)

        first, second = _race(database, TRANSITIONS["pause"][0], TRANSITIONS["pause"][0], campaign_id)

        assert not isinstance(first, DeliveryError)
        assert campaign_row(database, campaign_id).status is S.PAUSED
        assert isinstance(second, DeliveryError)
        assert str(second).startswith(f"cannot pause campaign {campaign_id}: it is paused (wrong price)")
        assert [e.action for e in _events(database)] == ["campaign_paused"]
    finally:
        database.dispose()


def test_audit_ls_and_campaign_status_show_what_the_marketer_did(cli: Any, database: Database) -> None:
    campaign_id = make_campaign(database, None, status=S.SENDING)

    cli("campaign", "pause", str(campaign_id), "--reason", "wrong price")
    paused = cli("campaign", "status", str(campaign_id)).stdout
    cli("campaign", "resume", str(campaign_id), "--later")
    cli("campaign", "cancel", str(campaign_id), "--reason", "wrong list")

    assert "paused" in paused and "wrong price" in paused
    events = json.loads(cli("audit", "ls", "--json").stdout)
    assert [(e["action"], e["subject"], e["reason"]) for e in events] == [
        ("campaign_paused", f"campaign {campaign_id}", "wrong price"),
        ("campaign_resumed", f"campaign {campaign_id}", ""),
        ("campaign_cancelled", f"campaign {campaign_id}", "wrong list"),
    ]
    text = cli("audit", "ls", "--action", "campaign_cancelled").stdout
    assert "campaign_cancelled" in text and "wrong list" in text


# -- one home ---------------------------------------------------------------------------------

MAILER = Path(__file__).resolve().parent.parent / "mailer"


def _status_members(node: ast.AST) -> list[str]:
    return [n.attr for n in ast.walk(node)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "CampaignStatus"]


def status_assignments(source: str) -> list[str]:
    """Where a CampaignStatus member is assigned to `.status` or passed as `status=`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Attribute) and t.attr == "status" for t in targets) and \
                    node.value is not None and _status_members(node.value):
                found.append(f"line {node.lineno}: .status = CampaignStatus.{_status_members(node.value)[0]}")
        elif isinstance(node, ast.Call):
            for keyword in node.keywords:
                members = _status_members(keyword.value)
                # a new campaign is born a draft; that is its creation, not a change of state
                birth = members == ["DRAFT"] and isinstance(node.func, ast.Name) and node.func.id == "Campaign"
                if keyword.arg == "status" and members and not birth:
                    found.append(f"line {node.lineno}: status=CampaignStatus.{members[0]}")
    return found


def test_only_lifecycle_changes_a_campaigns_status() -> None:
    offenders = {
        str(path.relative_to(MAILER.parent)): status_assignments(path.read_text(encoding="utf-8"))
        for path in sorted(MAILER.rglob("*.py")) if path.name != "lifecycle.py"
    }

    assert {path: lines for path, lines in offenders.items() if lines} == {}


def test_the_one_home_check_finds_each_way_of_changing_a_status() -> None:
    source = (
        "campaign.status = CampaignStatus.PAUSED\n"
        "sa.update(Campaign).values(status=CampaignStatus.SENT)\n"
        "Campaign(subject='x', status=CampaignStatus.DRAFT)\n"
        "Campaign(subject='x', status=CampaignStatus.SENDING)\n"
        "if campaign.status is CampaignStatus.SENDING: pass\n"
    )

    assert status_assignments(source) == [
        "line 1: .status = CampaignStatus.PAUSED",
        "line 2: status=CampaignStatus.SENT",
        "line 4: status=CampaignStatus.SENDING",
    ]
