"""The personal data page (`/me/<token>`) behind an emailed one-hour, single-use link: see, download,
correct, change the address (confirmed by the new one), erase exactly as `subscriber forget` does."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cli_helpers import Cli
from flask.testing import FlaskClient
from prefs_helpers import (
    BROWSER_UA,
    link_in,
    prefs_app,
    prefs_config,
    prefs_path,
    wait_for_messages,
)
from recipient_helpers import Person, add_person, audit_events, make_lists, snapshot, suppressions
from sending_helpers import make_campaign
from smtp_faults import FaultyServer

from mailer.config import Config
from mailer.db import Database, address_hash
from mailer.models import (
    AuditEvent,
    Delivery,
    DeliveryState,
    IdentityLink,
    Subscriber,
    Subscription,
    Suppression,
    SuppressionReason,
)
from mailer.recipients.subscribers import find_subscriber

_SECRET = re.compile(r'name="session" value="([^"]+)"')


@pytest.fixture
def config(tmp_path: Path, database: Database, smtp_server: FaultyServer) -> Config:
    return prefs_config(tmp_path, database, smtp_server)


@pytest.fixture
def client(config: Config) -> Iterator[FlaskClient]:
    app = prefs_app(config)
    yield app.test_client()
    app.extensions["mailer"].database.dispose()


@pytest.fixture
def ana(database: Database) -> Person:
    make_lists(database, "news", "offers")
    person = add_person(database, "ana@example.com", "news", "offers")
    with database.session() as session:
        subscriber = session.get(Subscriber, person.subscriber_id)
        assert subscriber is not None
        subscriber.name, subscriber.attributes = "Ana Lima", {"city": "Porto"}
    return person


def _request_link(client: FlaskClient, config: Config, person: Person, smtp_server: FaultyServer) -> str:
    before = len(smtp_server.messages)
    assert client.post(prefs_path(config, person.subscriber_id), data={"action": "link"}).status_code == 200
    return link_in(wait_for_messages(smtp_server, before + 1)[-1], "me")


def _post(client: FlaskClient, path: str, **form: str) -> tuple[int, str]:
    response = client.post(path, data=form, headers={"User-Agent": BROWSER_UA})
    return response.status_code, response.get_data(as_text=True)


def _open(client: FlaskClient, path: str) -> str:
    status, page = _post(client, path, action="open")
    assert status == 200, page
    found = _SECRET.search(page)
    assert found is not None
    return found.group(1)


@pytest.fixture
def opened(client: FlaskClient, config: Config, ana: Person, smtp_server: FaultyServer) -> tuple[str, str]:
    """Ana's data page, opened: its path and the secret its forms carry."""
    path = _request_link(client, config, ana, smtp_server)
    return path, _open(client, path)


def test_the_link_opens_once_and_a_scanners_get_spends_nothing(
    client: FlaskClient, config: Config, database: Database, ana: Person, smtp_server: FaultyServer
) -> None:
    path = _request_link(client, config, ana, smtp_server)
    before = snapshot(database)
    for _ in range(2):
        response = client.get(path)
        assert response.status_code == 200 and b"Show my data" in response.get_data()
    assert snapshot(database) == before

    status, page = _post(client, path, action="open")

    assert status == 200
    assert "ana@example.com" in page and 'value="Ana Lima"' in page and 'value="Porto"' in page
    assert "Harmony Mails" in page  # the company, on every page
    # single use: whoever gets the link next (a forwarded mail) sees nothing
    assert client.get(path).status_code == 400
    status, page = _post(client, path, action="open")
    assert status == 400 and "ana@example.com" not in page
    # the page's forms need the secret the first opening handed out
    assert _post(client, path, action="show")[0] == 400
    assert _post(client, path, action="show", session="guess")[0] == 400


def test_the_link_expires_after_an_hour(
    client: FlaskClient, config: Config, database: Database, ana: Person, smtp_server: FaultyServer
) -> None:
    path = _request_link(client, config, ana, smtp_server)
    secret = _open(client, path)
    with database.session() as session:
        [link] = session.scalars(sa.select(IdentityLink))
        assert link.expires_at - link.created_at == dt.timedelta(hours=1)
        link.expires_at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)

    status, page = _post(client, path, action="show", session=secret)

    assert status == 400 and "ana@example.com" not in page
    assert "Ask for a new link" in page
    fresh = _request_link(client, config, ana, smtp_server)
    assert client.get(fresh).status_code == 200


def test_a_forged_link_shows_nothing(client: FlaskClient, config: Config, ana: Person) -> None:
    from mailer.tokens import make_identity_token

    forged = make_identity_token(["another-key-0123456789abcdef"], "whatever")
    for path in (f"/me/{forged}", "/me/abc", "/me/" + "x" * 600):
        assert client.get(path).status_code == 400
        assert _post(client, path, action="open")[0] == 400


def test_the_download_is_the_export(
    client: FlaskClient, opened: tuple[str, str], config: Config, database: Database
) -> None:
    path, secret = opened

    response = client.post(path, data={"action": "download", "session": secret}, headers={"User-Agent": BROWSER_UA})

    assert response.status_code == 200
    assert response.headers["Content-Disposition"] == 'attachment; filename="my-data.json"'
    downloaded = json.loads(response.get_data())
    cli_export = json.loads(Cli(Path(config.source))("subscriber", "export", "ana@example.com").stdout)
    for key in ("email", "profile", "subscriptions", "deliveries", "suppression", "bounces", "controller"):
        assert downloaded[key] == cli_export[key]
    exports = audit_events(database, "export")
    assert [e.actor for e in exports][:2] == ["web", "web"]  # shown, then downloaded
    assert exports[1].reason == "downloaded from the personal data page"
    assert exports[1].detail["ip"] == "127.0.0.1" and exports[1].detail["user_agent"] == BROWSER_UA


def test_the_name_and_attributes_are_corrected_and_audited(
    client: FlaskClient, opened: tuple[str, str], database: Database
) -> None:
    path, secret = opened

    status, page = _post(client, path, action="correct", session=secret, name="Ana Lima Souza", **{"attr:city": ""})

    assert status == 200 and "Saved." in page and 'value="Ana Lima Souza"' in page
    with database.session() as session:
        subscriber = find_subscriber(session, "ana@example.com")
        assert subscriber is not None
        assert subscriber.name == "Ana Lima Souza" and subscriber.attributes == {}
    [event] = audit_events(database, "rectify")
    assert event.actor == "web" and event.detail["changed"] == ["name", "attribute city removed"]
    assert event.detail["ip"] == "127.0.0.1" and event.detail["user_agent"] == BROWSER_UA
    assert event.detail["source"] == "preferences"


def test_a_bad_name_is_refused_and_nothing_changes(
    client: FlaskClient, opened: tuple[str, str], database: Database
) -> None:
    path, secret = opened

    status, page = _post(client, path, action="correct", session=secret, name="Ana\r\nBcc: x@example.com")

    assert status == 400 and "must not contain line breaks" in page
    with database.session() as session:
        subscriber = find_subscriber(session, "ana@example.com")
        assert subscriber is not None and subscriber.name == "Ana Lima"
    assert audit_events(database, "rectify") == []


def test_a_new_address_changes_only_when_it_confirms(
    client: FlaskClient, opened: tuple[str, str], database: Database, smtp_server: FaultyServer
) -> None:
    path, secret = opened
    sent = len(smtp_server.messages)

    status, page = _post(client, path, action="change_address", session=secret, new_email="ana@newmail.example")

    assert status == 200 and "a confirmation link is on its way" in page
    message = wait_for_messages(smtp_server, sent + 1)[-1]
    assert message["To"] == "Ana Lima <ana@newmail.example>"
    assert message["Subject"] == "Please confirm your new address"
    with database.session() as session:
        assert find_subscriber(session, "ana@example.com") is not None  # nothing changed yet
    confirm = link_in(message, "me")
    response = client.get(confirm)
    assert response.status_code == 200 and "a•••@newmail.example".encode() in response.get_data()
    assert find_subscriber_email(database) == "ana@example.com"  # a scanner's GET changes nothing

    status, page = _post(client, confirm, action="confirm_address")

    assert status == 200 and "Your address is changed" in page
    assert find_subscriber_email(database) == "ana@newmail.example"
    [event] = audit_events(database, "rectify")
    assert event.actor == "web" and event.detail["changed"] == ["email"] and event.detail["ip"] == "127.0.0.1"
    assert _post(client, confirm, action="confirm_address")[0] == 400  # single use


def find_subscriber_email(database: Database) -> str:
    with database.session() as session:
        return str(session.scalar(sa.select(Subscriber.email)))


@pytest.mark.parametrize("taken", ["bob@example.com", "gone@example.com"])
def test_a_taken_or_suppressed_address_gets_the_same_answer_and_no_mail(
    client: FlaskClient, opened: tuple[str, str], database: Database, smtp_server: FaultyServer, taken: str
) -> None:
    add_person(database, "bob@example.com", "news")
    _suppress(database, "gone@example.com")
    path, secret = opened
    sent = len(smtp_server.messages)

    answers = {}
    for address in (taken, "free@example.com"):
        status, page = _post(client, path, action="change_address", session=secret, new_email=address)
        assert status == 200
        answers[address] = re.sub(r"<details>.*</details>", "", page, flags=re.S)

    assert answers[taken] == answers["free@example.com"]
    [message] = wait_for_messages(smtp_server, sent + 1)[sent:]
    assert message["To"].endswith("<free@example.com>")
    events = audit_events(database, "address_change_requested")
    assert len(events) == 2  # the person's own trail reads the same for both


def _suppress(database: Database, email: str) -> None:
    from mailer.recipients.suppression import suppress

    with database.session() as session:
        suppress(session, email, SuppressionReason.MANUAL, "test", None)


def test_erasing_asks_first(client: FlaskClient, opened: tuple[str, str], database: Database) -> None:
    path, secret = opened
    before = snapshot(database)

    status, page = _post(client, path, action="erase_ask", session=secret)

    assert status == 200 and "Yes, erase everything" in page and "cannot be undone" in page
    assert snapshot(database)[2:] == before[2:]  # the person is all there


def _held(database: Database, email: str) -> dict[str, Any]:
    """What is left about a person after an erasure, in a form two people's can be compared."""
    digest = address_hash(email)
    with database.session() as session:
        suppression = session.scalar(sa.select(Suppression).where(Suppression.address_hash == digest))
        assert suppression is not None
        [erase_event] = session.scalars(sa.select(AuditEvent).where(
            AuditEvent.subject == digest, AuditEvent.action == "erase"))
        dump = json.dumps([[str(v) for v in row] for table in (Subscriber, Subscription, Delivery, AuditEvent,
                                                                Suppression, IdentityLink)
                           for row in session.execute(sa.select(table.__table__)).all()])  # type: ignore[attr-defined]
        return {
            "suppression": (suppression.email, suppression.reason, suppression.source, suppression.ip,
                            suppression.user_agent),
            "erase": {k: v for k, v in erase_event.detail.items() if k != "address_hash"},
            "reason": erase_event.reason.split(" (")[0],
            "detached": session.scalar(sa.select(sa.func.count()).select_from(Delivery)
                                       .where(Delivery.subscriber_id.is_(None))),
            "named_anywhere": email.split("@")[0] + "@" in dump or "Lima" in dump,
        }


def test_erasing_on_the_page_does_what_subscriber_forget_does(
    client: FlaskClient, config: Config, database: Database, ana: Person, smtp_server: FaultyServer
) -> None:
    # a twin of Ana with the same lists, name, attribute and a delivery whose reply quotes her
    bea = add_person(database, "bea@example.com", "news", "offers")
    campaign = make_campaign(database, ana.list_ids["news"])
    with database.session() as session:
        for person in (ana, bea):
            subscriber = session.get(Subscriber, person.subscriber_id)
            assert subscriber is not None
            subscriber.name, subscriber.attributes = "Ana Lima", {"city": "Porto"}
            session.add(Delivery(campaign_id=campaign, subscriber_id=person.subscriber_id, state=DeliveryState.SENT,
                                 last_response=f"250 ok <{person.email}>"))
    path = _request_link(client, config, ana, smtp_server)
    secret = _open(client, path)

    status, page = _post(client, path, action="erase", session=secret)
    Cli(Path(config.source))("subscriber", "forget", "bea@example.com", "--yes")

    assert status == 200 and "Everything is erased" in page
    web, cli = _held(database, "ana@example.com"), _held(database, "bea@example.com")
    assert web["suppression"] == cli["suppression"] == (None, SuppressionReason.ERASED, "erasure", None, None)
    # the web erasure also pseudonymized the link and export events of the visit itself
    assert web["erase"].pop("audit_events_pseudonymized") > cli["erase"].pop("audit_events_pseudonymized")
    assert web["erase"] == cli["erase"]
    assert web["erase"]["subscriptions"] == ["news", "offers"] and web["erase"]["deliveries_detached"] == 1
    assert web["detached"] == 2
    assert not web["named_anywhere"] and not cli["named_anywhere"]
    # the link died with the person
    assert client.get(path).status_code == 400
    assert _post(client, path, action="show", session=secret)[0] == 400
    assert [e.actor for e in audit_events(database, "erase")] == ["web", f"cli:{_user()}"]
    assert [s.reason for s in suppressions(database)] == [SuppressionReason.ERASED] * 2


def _user() -> str:
    import getpass

    return getpass.getuser()


def test_expired_links_and_the_addresses_they_held_are_dropped(
    client: FlaskClient, opened: tuple[str, str], database: Database, config: Config, ana: Person,
    smtp_server: FaultyServer,
) -> None:
    path, secret = opened
    _post(client, path, action="change_address", session=secret, new_email="ana@newmail.example")
    with database.session() as session:
        for link in session.scalars(sa.select(IdentityLink)):
            link.expires_at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)

    _request_link(client, config, ana, smtp_server)

    with database.session() as session:
        [link] = session.scalars(sa.select(IdentityLink))
        assert link.new_email is None and link.used_at is None


def test_of_several_openings_at_once_exactly_one_gets_the_page(
    client: FlaskClient, config: Config, ana: Person, smtp_server: FaultyServer
) -> None:
    path = _request_link(client, config, ana, smtp_server)
    app = client.application

    def open_once(_: int) -> int:
        return app.test_client().post(path, data={"action": "open"}).status_code

    with ThreadPoolExecutor(max_workers=4) as pool:
        codes = sorted(pool.map(open_once, range(4)))

    assert codes == [200, 400, 400, 400]
