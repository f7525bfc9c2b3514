"""The preference centre from the footer (`/p/<token>`) and `/preferences`, through Flask's test client
against a real relay: list choice, leaving everything, identity links, the same answer for any address."""

from __future__ import annotations

import dataclasses
import re
import threading
from collections.abc import Iterator
from email.policy import SMTP
from pathlib import Path

import pytest
import sqlalchemy as sa
from cli_helpers import Cli
from compose_helpers import make_config, parse, render
from flask.testing import FlaskClient
from hypothesis import given, settings
from hypothesis import strategies as st
from prefs_helpers import (
    BROWSER_UA,
    html_of,
    link_in,
    parsed,
    prefs_app,
    prefs_config,
    prefs_path,
    text_of,
    wait_for_asks,
    wait_for_messages,
)
from recipient_helpers import (
    Person,
    add_person,
    audit_events,
    erase,
    make_lists,
    snapshot,
    statuses,
    suppressions,
)
from smtp_faults import FaultyServer

from mailer.config import Config
from mailer.content.compliance import check_message
from mailer.db import Database
from mailer.models import SubscriptionStatus, SuppressionReason
from mailer.web.limits import limiter

UNSUBSCRIBED = SubscriptionStatus.UNSUBSCRIBED


@pytest.fixture
def config(tmp_path: Path, database: Database, smtp_server: FaultyServer) -> Config:
    return prefs_config(tmp_path, database, smtp_server)


@pytest.fixture
def client(config: Config) -> Iterator[FlaskClient]:
    app = prefs_app(config)
    yield app.test_client()
    wait_for_asks()
    app.extensions["mailer"].database.dispose()


@pytest.fixture
def ana(database: Database) -> Person:
    make_lists(database, "news", "offers")
    return add_person(database, "ana@example.com", "news", "offers")


def _post(client: FlaskClient, path: str, **form: str | list[str]) -> tuple[int, str]:
    response = client.post(path, data=form, headers={"User-Agent": BROWSER_UA})
    return response.status_code, response.get_data(as_text=True)


def test_the_page_shows_the_lists_and_changes_nothing(
    client: FlaskClient, config: Config, database: Database, ana: Person
) -> None:
    before = snapshot(database)

    response = client.get(prefs_path(config, ana.subscriber_id))

    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "a•••@example.com" in page and "ana@example.com" not in page
    for name in ("news", "offers"):
        assert f'value="{ana.list_ids[name]}" id="list-{ana.list_ids[name]}" checked' in page
        assert f'<label for="list-{ana.list_ids[name]}">{name.title()}' in page
    assert snapshot(database) == before  # scanners fetch links
    assert "Set-Cookie" not in response.headers


def test_unticking_a_list_leaves_it_and_the_trail_says_from_where(
    client: FlaskClient, config: Config, database: Database, ana: Person, smtp_server: FaultyServer
) -> None:
    status, page = _post(client, prefs_path(config, ana.subscriber_id),
                         action="save", list=str(ana.list_ids["news"]))

    assert status == 200 and "You left: Offers." in page
    assert statuses(database, ana) == {"news": SubscriptionStatus.ACTIVE, "offers": UNSUBSCRIBED}
    assert suppressions(database) == []  # leaving one list is no opt-out from everything
    [event] = audit_events(database)
    assert event.actor == "web" and event.subject == "ana@example.com"
    assert event.detail["lists"] == ["Offers"] and event.detail["source"] == "preferences"
    assert event.detail["ip"] == "127.0.0.1" and event.detail["user_agent"] == BROWSER_UA
    assert smtp_server.messages == []


def test_a_list_value_of_unicode_digits_is_no_list_and_no_server_error(
    client: FlaskClient, config: Config, database: Database, ana: Person
) -> None:
    # "²" and "٣" pass str.isdigit(); the first is no number int() takes, the second no list of ours
    status, page = _post(client, prefs_path(config, ana.subscriber_id), action="save",
                         list=["²", "٣", str(ana.list_ids["news"])])

    assert status == 200 and "You left: Offers." in page
    assert statuses(database, ana) == {"news": SubscriptionStatus.ACTIVE, "offers": UNSUBSCRIBED}


def test_choosing_a_list_again_waits_for_the_address_to_confirm(
    client: FlaskClient, config: Config, database: Database, ana: Person, smtp_server: FaultyServer
) -> None:
    path = prefs_path(config, ana.subscriber_id)
    _post(client, path, action="save", list=str(ana.list_ids["news"]))

    status, page = _post(client, path, action="save", list=[str(ana.list_ids["news"]), str(ana.list_ids["offers"])])

    assert status == 200 and "We sent a confirmation link to your address for: Offers" in page
    # a footer may have been forwarded: nothing is mailed from the list until the address says yes
    assert statuses(database, ana)["offers"] is SubscriptionStatus.UNCONFIRMED
    [message] = wait_for_messages(smtp_server, 1)
    assert message["To"] == "ana@example.com"
    confirm = link_in(message, "confirm")
    assert client.post(confirm).status_code == 200
    assert statuses(database, ana)["offers"] is SubscriptionStatus.ACTIVE
    [again] = audit_events(database, "resubscribe")
    assert again.detail["lists"] == ["Offers"] and again.detail["ip"] == "127.0.0.1"


def test_an_address_that_left_everything_is_not_re_subscribed_silently(
    client: FlaskClient, config: Config, database: Database, ana: Person, smtp_server: FaultyServer
) -> None:
    path = prefs_path(config, ana.subscriber_id)
    status, page = _post(client, path, action="leave")
    assert status == 200 and "You are unsubscribed" in page

    status, page = _post(client, path, action="save", list=[str(v) for v in ana.list_ids.values()])

    assert status == 200
    assert "Not re-subscribed to News, Offers: this address has opted out of all our marketing email" in page
    assert set(statuses(database, ana).values()) == {UNSUBSCRIBED}
    assert smtp_server.messages == []
    assert "This address has opted out of all marketing email" in client.get(path).get_data(as_text=True)


def test_leave_everything_is_the_unsubscribe_links_opt_out(
    client: FlaskClient, config: Config, database: Database, ana: Person
) -> None:
    _post(client, prefs_path(config, ana.subscriber_id), action="leave")
    _post(client, prefs_path(config, ana.subscriber_id), action="leave")  # harmless again

    [entry] = suppressions(database)
    assert entry.reason is SuppressionReason.UNSUBSCRIBED and entry.source == "preferences"
    assert entry.ip == "127.0.0.1" and entry.user_agent == BROWSER_UA
    assert set(statuses(database, ana).values()) == {UNSUBSCRIBED}
    [event] = audit_events(database)
    assert event.actor == "web" and event.detail["scope"] == "all"


@pytest.mark.parametrize("action", ["save", "leave", "link"])
def test_a_tampered_or_erased_persons_link_changes_nothing(
    client: FlaskClient, config: Config, database: Database, ana: Person, smtp_server: FaultyServer, action: str
) -> None:
    bob = add_person(database, "bob@example.com", "news")
    erase(database, bob)
    before = snapshot(database)
    good = prefs_path(config, ana.subscriber_id)

    for path in (good[:-2] + ("AA" if not good.endswith("AA") else "BB"), prefs_path(config, bob.subscriber_id),
                 "/p/" + "x" * 600):
        assert client.get(path).status_code == 400
        status, page = _post(client, path, action=action)
        assert status == 400 and "does not work" in page

    assert snapshot(database) == before
    assert smtp_server.messages == []


def test_email_me_a_link_mails_a_one_hour_link_to_the_data_page(
    client: FlaskClient, config: Config, database: Database, ana: Person, smtp_server: FaultyServer
) -> None:
    status, page = _post(client, prefs_path(config, ana.subscriber_id), action="link")

    assert status == 200 and "Check your email" in page
    [message] = wait_for_messages(smtp_server, 1)
    assert message["To"] == "ana@example.com"
    assert message["Subject"] == "Your link to the data we hold about you"
    assert message["Auto-Submitted"] == "auto-generated"
    assert "within 60 minutes" in text_of(message)
    assert link_in(message, "me") in html_of(message)
    [event] = audit_events(database, "identity_link")
    assert event.actor == "web" and event.detail["ip"] == "127.0.0.1"


def test_asking_by_address_answers_byte_for_byte_the_same_for_anyone(
    client: FlaskClient, database: Database, ana: Person, smtp_server: FaultyServer
) -> None:
    left = add_person(database, "lee@example.com", "news")
    gone = add_person(database, "gus@example.com", "news")
    erase(database, gone)
    _leave_all(client, database, left)

    answers = {address: client.post("/preferences", data={"email": address}).get_data()
               for address in ("ana@example.com", "ANA@Example.com", "nobody@example.com",
                               "lee@example.com", "gus@example.com")}

    assert len(set(answers.values())) == 1
    assert b"If we hold that address, a link to your data is on its way" in answers["ana@example.com"]
    # the known ones (an opted-out person still has the right to see their data) get the link
    received = wait_for_messages(smtp_server, 3)
    assert sorted(m["To"] for m in received) == ["ana@example.com", "ana@example.com", "lee@example.com"]


def test_asking_by_address_does_the_same_work_before_answering_for_anyone(
    client: FlaskClient, ana: Person, smtp_server: FaultyServer
) -> None:
    # what the answer waits for must not depend on the address being known: a write, a commit
    # and a rendered message only for a known one tell it apart by how long the answer takes
    engine = client.application.extensions["mailer"].database.engine
    answering = threading.get_ident()
    statements: list[str] = []

    def note(conn: object, cursor: object, statement: str, *args: object) -> None:
        if threading.get_ident() == answering:
            statements.append(statement.split()[0].upper())

    sa.event.listen(engine, "before_cursor_execute", note)
    try:
        work = {}
        for address in ("nobody@example.com", "ana@example.com"):
            statements.clear()
            assert client.post("/preferences", data={"email": address}).status_code == 200
            work[address] = list(statements)
    finally:
        sa.event.remove(engine, "before_cursor_execute", note)

    assert work["ana@example.com"] == work["nobody@example.com"]
    [message] = wait_for_messages(smtp_server, 1)
    assert message["To"] == "ana@example.com"


def _leave_all(client: FlaskClient, database: Database, person: Person) -> None:
    from mailer.recipients.optout import OptOutSource, unsubscribe
    from mailer.tokens import UnsubscribeClaim

    config = client.application.extensions["mailer"].config
    with database.session() as session:
        unsubscribe(session, config, UnsubscribeClaim(person.subscriber_id, None, None), OptOutSource.PAGE)


def test_a_mistyped_address_is_said_to_be_one_and_nothing_is_sent(
    client: FlaskClient, smtp_server: FaultyServer
) -> None:
    assert client.get("/preferences").status_code == 200

    response = client.post("/preferences", data={"email": "not an address"})

    assert response.status_code == 400
    assert b"Please enter a valid email address." in response.get_data()
    assert b'<label for="email">Email address</label>' in response.get_data()
    assert smtp_server.messages == []


def test_link_requests_are_limited_per_address_and_per_client(
    config: Config, ana: Person, smtp_server: FaultyServer
) -> None:
    app = prefs_app(config, rate_limits=True)
    client = app.test_client()
    limiter.reset()
    try:
        codes = [client.post("/preferences", data={"email": "ana@example.com"}).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        # another address from the same client goes on until the client's own limit
        codes = [client.post("/preferences", data={"email": f"p{i}@example.com"}).status_code for i in range(8)]
        assert codes == [200] * 7 + [429]
        # the footer's button counts against the same client
        assert client.post(prefs_path(config, ana.subscriber_id), data={"action": "link"}).status_code == 429
        # leaving is never limited
        assert client.post(prefs_path(config, ana.subscriber_id), data={"action": "leave"}).status_code == 200
    finally:
        limiter.reset()
        wait_for_asks()
        app.extensions["mailer"].database.dispose()
    assert len(wait_for_messages(smtp_server, 3)) == 3


def test_the_campaign_footer_links_to_the_preference_centre_and_the_gate_passes(
    tmp_path: Path, config: Config, client: FlaskClient, database: Database, smtp_server: FaultyServer
) -> None:
    cli = Cli(Path(config.source))
    cli("list", "create", "news", "--title", "Harmony News")
    cli("subscriber", "add", "ana@example.com", "--list", "news", "--name", "Ana")
    template = tmp_path / "hello.html.j2"
    template.write_text("<p>Hello {{ subscriber.name }}, our winter range is here.</p>", encoding="utf-8")
    campaign = cli("campaign", "create", "--list", "news", "--subject", "Our winter range",
                   "--template", str(template)).stdout.strip().split()[-1]

    assert cli("campaign", "check", campaign).exit_code == 0
    cli("campaign", "send", campaign)

    [received] = smtp_server.messages
    message = parsed(received.data)
    path = link_in(message, "p")
    assert "Manage your preferences" in text_of(message)
    assert f'href="https://harmonymails.com{path}"' in html_of(message)
    assert ">Manage your preferences</a>" in html_of(message)
    page = client.get(path).get_data(as_text=True)
    assert "a•••@example.com" in page and "Harmony News" in page


@settings(max_examples=60)
@given(typed=st.text(st.characters(exclude_categories=("Cs",)), max_size=400))
def test_whatever_is_typed_gets_the_one_answer_or_a_typing_hint(
    client: FlaskClient, smtp_server: FaultyServer, typed: str
) -> None:
    response = client.post("/preferences", data={"email": typed})

    body = response.get_data()
    if response.status_code == 200:
        assert b"If we hold that address, a link to your data is on its way" in body
    else:
        assert response.status_code == 400 and b"Please enter a valid email address." in body
    assert smtp_server.messages == []  # nobody is known here


@settings(max_examples=40)
@given(form=st.dictionaries(st.sampled_from(["action", "list", "email", "session"]),
                            st.text(st.characters(exclude_categories=("Cs",)), max_size=50)))
def test_any_form_on_the_page_changes_nothing_it_should_not(
    client: FlaskClient, config: Config, database: Database, ana: Person, form: dict[str, str]
) -> None:
    response = client.post(prefs_path(config, ana.subscriber_id), data=form)

    assert response.status_code in (200, 400)
    if form.get("action") not in ("save", "leave", "link"):
        assert response.status_code == 400


def test_the_gate_refuses_a_message_without_a_working_preference_link() -> None:
    rendered = render()
    assert check_message(make_config(), rendered) == []
    message = parse(rendered.data)
    text_part, html_part = message.get_body(("plain",)), message.get_body(("html",))
    assert text_part is not None and html_part is not None
    text, html = str(text_part.get_content()), str(html_part.get_content())
    text_part.set_content(re.sub(r"(/p/[A-Za-z0-9_.\-]+)", r"\1x", text))
    html_part.set_content(re.sub(r'<a href="[^"]*/p/[^"]*"', '<a href="https://harmonymails.com/"', html),
                          subtype="html")

    problems = check_message(make_config(), dataclasses.replace(rendered, data=message.as_bytes(policy=SMTP)))

    assert "the preference centre link does not verify" in problems
    assert "the preference centre link is missing from the footer of the HTML part" in problems


def test_a_relay_that_is_down_is_said_on_the_footer_page_and_hidden_on_the_address_page(
    client: FlaskClient, config: Config, ana: Person, smtp_server: FaultyServer
) -> None:
    smtp_server.faults.refuse_all_connections = True
    unknown = client.post("/preferences", data={"email": "nobody@example.com"}).get_data()

    status, page = _post(client, prefs_path(config, ana.subscriber_id), action="link")
    known = client.post("/preferences", data={"email": "ana@example.com"}).get_data()

    assert status == 503 and "We could not send the link just now" in page
    assert known == unknown  # the relay's trouble must not tell a known address from another
    assert smtp_server.messages == []


def test_choosing_lists_again_and_again_from_one_footer_is_limited(
    config: Config, ana: Person, smtp_server: FaultyServer
) -> None:
    # a forwarded footer: leaving and choosing a list again mails its owner a confirmation each time
    app = prefs_app(config, rate_limits=True)
    client = app.test_client()
    limiter.reset()
    path = prefs_path(config, ana.subscriber_id)
    news = str(ana.list_ids["news"])
    try:
        codes = []
        for _ in range(11):
            assert client.post(path, data={"action": "save"}).status_code == 200  # leaving is never limited
            codes.append(client.post(path, data={"action": "save", "list": news}).status_code)
        assert codes == [200] * 10 + [429]
        assert client.post(path, data={"action": "leave"}).status_code == 200
    finally:
        limiter.reset()
        wait_for_asks()
        app.extensions["mailer"].database.dispose()
    assert len(wait_for_messages(smtp_server, 10)) == 10
