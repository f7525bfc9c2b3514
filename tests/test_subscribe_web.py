"""Sign-up pages: the hosted form, the embedded form, JSON; always double opt-in, no enumeration."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
import sqlalchemy as sa
from cli_helpers import Cli
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import given, settings
from hypothesis import strategies as st
from recipient_helpers import add_person, make_lists
from signup_helpers import confirm_path, signup_app, signup_config, wait_for_confirmations
from smtp_faults import FaultyServer

from mailer.db import Database
from mailer.errors import ConfigError
from mailer.models import Subscriber, Subscription, SubscriptionStatus

GENEROUS = '[web]\nsignup_limit_per_ip = "1000 per hour"\nsignup_limit_per_address = "1000 per hour"\n'
ORIGIN = "https://www.harmonymails.com"


@pytest.fixture
def config_path(tmp_path: Path, database: Database, smtp_server: FaultyServer) -> Path:
    return signup_config(tmp_path, database.url, smtp_server,
                         GENEROUS + f'allowed_origins = ["{ORIGIN}"]\n')


@pytest.fixture
def apps() -> Iterator[list[Flask]]:
    """The apps a test made; their database connections are closed after it."""
    made: list[Flask] = []
    yield made
    wait_for_confirmations()
    for app in made:
        app.extensions["mailer"].database.dispose()


def _client(apps: list[Flask], config_path: Path) -> FlaskClient:
    apps.append(signup_app(config_path))
    return apps[-1].test_client()


@pytest.fixture
def client(config_path: Path, database: Database, apps: list[Flask]) -> FlaskClient:
    make_lists(database, "news")
    return _client(apps, config_path)


def _sign_up(client: FlaskClient, address: str, **extra: str) -> tuple[int, bytes]:
    fields = {"email": address, "name": "", "website": "", "consent": "yes", **extra}
    response = client.post("/subscribe/news", data=fields)
    wait_for_confirmations()
    return response.status_code, response.data


def _subscriptions(database: Database) -> dict[str, Subscription]:
    with database.session() as session:
        rows = session.execute(sa.select(Subscriber.email, Subscription).join(Subscription))
        return {address: subscription for address, subscription in rows}


class _Fields(HTMLParser):
    """Every form control of a page, and the `for` of every label."""

    def __init__(self) -> None:
        super().__init__()
        self.controls: list[dict[str, str | None]] = []
        self.labels: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag in ("input", "textarea", "select"):
            self.controls.append(found)
        if tag == "label" and found.get("for"):
            self.labels.add(str(found["for"]))


def _fields_of(html: str) -> _Fields:
    parser = _Fields()
    parser.feed(html)
    return parser


def test_the_form_labels_every_field_and_shows_the_lists_consent_words(
    cli: Cli, database: Database, config_path: Path, apps: list[Flask]
) -> None:
    cli("list", "create", "offers", "--title", "Harmony Offers",
        "--consent", "Send me Harmony Offers, at most twice a month.")
    client = _client(apps, config_path)

    page = client.get("/subscribe/offers")

    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert "Send me Harmony Offers, at most twice a month." in html
    fields = _fields_of(html)
    assert {c["name"] for c in fields.controls} == {"email", "name", "website", "consent"}
    assert all(c["id"] in fields.labels for c in fields.controls)
    # the company, its postal address and its privacy policy are on the page
    assert "Harmony Mails" in html and "1968 S Coast HWY #2045" in html and "Privacy policy" in html
    assert "<script" not in html
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    assert client.get("/subscribe/nope").status_code == 404


def test_a_web_sign_up_is_double_opt_in_with_a_full_consent_record(
    client: FlaskClient, database: Database, smtp_server: FaultyServer, cli: Cli
) -> None:
    # the list itself is single opt-in: a web sign-up is confirmed all the same
    response = client.post(
        "/subscribe/news",
        data={"email": "Ana@Example.com", "name": "Ana Lima", "website": "", "consent": "yes"},
        headers={"User-Agent": "Mozilla/5.0 (Ana's phone)", "Referer": "https://www.harmonymails.com/news"},
        environ_base={"REMOTE_ADDR": "203.0.113.7"},
    )
    wait_for_confirmations()

    assert response.status_code == 200
    assert "Check your inbox" in response.get_data(as_text=True)
    subscription = _subscriptions(database)["Ana@example.com"]
    assert subscription.status is SubscriptionStatus.UNCONFIRMED
    assert subscription.consent_source == "web"
    assert subscription.consent_ip == "203.0.113.7"
    assert subscription.consent_user_agent == "Mozilla/5.0 (Ana's phone)"
    assert subscription.consent_page == "https://www.harmonymails.com/news"
    assert subscription.consent_text == "Yes, email me News from Harmony Mails. I can unsubscribe at any time with the link in every message."
    [received] = smtp_server.messages
    assert received.rcpt_tos == ["Ana@example.com"]

    assert client.post(confirm_path(smtp_server)).status_code == 200
    exported = json.loads(cli("subscriber", "export", "ana@example.com").stdout)
    [sub] = exported["subscriptions"]
    assert sub["status"] == "active"
    assert sub["consent"]["page"] == "https://www.harmonymails.com/news"
    assert sub["consent"]["wording"].startswith("Yes, email me News")
    assert sub["confirmation"]["ip"] == "127.0.0.1"
    assert [e["action"] for e in json.loads(cli("audit", "ls", "--json").stdout)].count("signup") == 1


def test_new_subscribed_suppressed_and_erased_addresses_get_byte_equal_answers(
    client: FlaskClient, database: Database, smtp_server: FaultyServer, cli: Cli
) -> None:
    add_person(database, "bo@example.com", "news")
    cli("suppress", "add", "cy@example.com")
    add_person(database, "di@example.com", "news")
    cli("subscriber", "forget", "di@example.com", "--yes")

    answers = {address: _sign_up(client, address)
               for address in ("new@example.com", "bo@example.com", "cy@example.com", "di@example.com")}

    assert len(set(answers.values())) == 1
    assert next(iter(answers.values()))[0] == 200
    # only the new address was mailed; the suppressed and the erased one never are
    assert [m.rcpt_tos for m in smtp_server.messages] == [["new@example.com"]]
    statuses = {a: s.status for a, s in _subscriptions(database).items()}
    assert statuses == {"new@example.com": SubscriptionStatus.UNCONFIRMED,
                        "bo@example.com": SubscriptionStatus.ACTIVE}


def test_the_honeypot_answers_like_a_person_and_changes_nothing(
    client: FlaskClient, database: Database, smtp_server: FaultyServer
) -> None:
    person = _sign_up(client, "new@example.com")
    bot = _sign_up(client, "bot@example.com", website="https://spam.example")

    assert bot == person
    assert "bot@example.com" not in _subscriptions(database)
    assert [m.rcpt_tos for m in smtp_server.messages] == [["new@example.com"]]


@pytest.mark.parametrize(("fields", "reason"), [
    ({"email": "not-an-address", "consent": "yes"}, "not-an-address"),
    ({"email": "ana@example.com"}, "Please tick the box"),
    ({"email": "ana@example.com", "name": "Ana\nBcc: x", "consent": "yes"}, "line breaks"),
])
def test_bad_input_is_one_clear_line_and_nothing_is_kept(
    client: FlaskClient, database: Database, smtp_server: FaultyServer, fields: dict[str, str], reason: str
) -> None:
    response = client.post("/subscribe/news", data=fields)

    html = response.get_data(as_text=True)
    assert response.status_code == 400
    [error] = re.findall(r'<p class="error-message"[^>]*>(.*?)</p>', html)
    assert reason.lower() in error.replace("&#39;", "'").lower()
    # the form comes back with what was typed
    assert 'value="' + fields["email"] in html
    assert _subscriptions(database) == {} and smtp_server.messages == []


def test_json_sign_ups_from_an_allowed_origin_get_cors_headers(
    client: FlaskClient, database: Database, smtp_server: FaultyServer
) -> None:
    preflight = client.options("/subscribe/news", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    response = client.post("/subscribe/news", json={"email": "ana@example.com", "consent": True},
                           headers={"Origin": ORIGIN})
    wait_for_confirmations()

    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Methods"] == "POST"
    assert preflight.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert response.json == {"status": "check your inbox", "list": "news"}
    assert _subscriptions(database)["ana@example.com"].consent_page == ORIGIN
    assert len(smtp_server.messages) == 1


def test_json_from_any_other_origin_is_refused_and_gets_no_cors_headers(
    client: FlaskClient, database: Database, smtp_server: FaultyServer
) -> None:
    evil = "https://evil.example"
    preflight = client.options("/subscribe/news", headers={"Origin": evil, "Access-Control-Request-Method": "POST"})
    response = client.post("/subscribe/news", json={"email": "ana@example.com", "consent": True},
                           headers={"Origin": evil})
    bad = client.post("/subscribe/news", json={"email": "nope", "consent": True}, headers={"Origin": ORIGIN})

    assert "Access-Control-Allow-Origin" not in preflight.headers
    assert "Access-Control-Allow-Methods" not in preflight.headers
    assert response.status_code == 403
    assert "Access-Control-Allow-Origin" not in response.headers
    assert bad.status_code == 400 and "nope" in bad.json["error"]
    assert _subscriptions(database) == {} and smtp_server.messages == []


def test_an_oversized_body_is_413_and_nothing_is_kept(client: FlaskClient, database: Database) -> None:
    response = client.post("/subscribe/news", data={"email": "ana@example.com", "consent": "yes",
                                                    "name": "x" * 20_000})

    assert response.status_code == 413
    assert _subscriptions(database) == {}


def test_per_ip_and_per_address_rate_limits_answer_429(
    tmp_path: Path, database: Database, smtp_server: FaultyServer, apps: list[Flask]
) -> None:
    make_lists(database, "news")
    path = signup_config(tmp_path, database.url, smtp_server,
                         '[web]\nsignup_limit_per_ip = "3 per hour"\nsignup_limit_per_address = "2 per day"\n')
    client = _client(apps, path)

    def post(address: str, ip: str) -> int:
        return client.post("/subscribe/news", data={"email": address, "consent": "yes"},
                           environ_base={"REMOTE_ADDR": ip}).status_code

    from_one_ip = [post(f"p{n}@example.com", "198.51.100.1") for n in range(4)]
    # one address from ever new addresses: the per-address limit holds across IPs, in any case
    for_one_address = [post("Target@Example.com", f"192.0.2.{n}") for n in range(2)]
    for_one_address.append(post("target@example.com", "192.0.2.99"))
    wait_for_confirmations()

    assert from_one_ip == [200, 200, 200, 429]
    assert for_one_address == [200, 200, 429]
    limited = client.post("/subscribe/news", data={"email": "p9@example.com", "consent": "yes"},
                          environ_base={"REMOTE_ADDR": "198.51.100.1"})
    assert "Retry-After" in limited.headers
    assert "Too Many Requests" in limited.get_data(as_text=True)
    # a page view is never limited
    assert client.get("/subscribe/news", environ_base={"REMOTE_ADDR": "198.51.100.1"}).status_code == 200


def test_the_embed_snippet_posts_a_working_sign_up(
    cli: Cli, client: FlaskClient, database: Database, smtp_server: FaultyServer
) -> None:
    snippet = cli("list", "form", "news").stdout

    assert '<form method="post" action="https://harmonymails.com/subscribe/news"' in snippet
    assert "<script" not in snippet and "<link" not in snippet
    fields = _fields_of(snippet)
    assert all(c["id"] in fields.labels for c in fields.controls)
    data = {str(c["name"]): "" for c in fields.controls}
    data.update(email="eve@example.com", consent="yes")
    response = client.post("/subscribe/news", data=data, headers={"Origin": "https://shop.example"})
    wait_for_confirmations()

    assert response.status_code == 200
    assert _subscriptions(database)["eve@example.com"].consent_page == "https://shop.example"
    assert [m.rcpt_tos for m in smtp_server.messages] == [["eve@example.com"]]
    assert cli("list", "form", "nope", ok=False).exit_code != 0


def test_an_operator_can_override_the_page_texts(tmp_path: Path, database: Database, apps: list[Flask]) -> None:
    make_lists(database, "news")
    custom = tmp_path / "pages" / "web"
    custom.mkdir(parents=True)
    (custom / "subscribe_sent.html").write_text(
        '{% extends "web/base.html" %}{% block content %}<h1>Almost there, friend</h1>{% endblock %}')
    (custom / "web.css").write_text("body { background: #fff8e7; }")
    path = signup_config(tmp_path, database.url, None, GENEROUS + f'templates_dir = "{tmp_path / "pages"}"\n')
    client = _client(apps, path)

    response = client.post("/subscribe/news", data={"email": "bot@example.com", "website": "x", "consent": "yes"})

    assert "Almost there, friend" in response.get_data(as_text=True)
    assert "Subscribe to News" in client.get("/subscribe/news").get_data(as_text=True)
    assert client.get("/assets/web.css").data == b"body { background: #fff8e7; }"


@settings(max_examples=60)
@given(fields=st.dictionaries(
    st.sampled_from(["email", "name", "website", "consent", "extra"]),
    st.text(max_size=300) | st.sampled_from(["yes", "ana@example.com", "x@[127.0.0.1]", "\x00@\r\n.com"]),
))
def test_any_form_is_an_answer_or_a_clear_refusal_never_a_crash(
    client: FlaskClient, database: Database, fields: dict[str, str]
) -> None:
    response = client.post("/subscribe/news", data=fields)

    assert response.status_code in (200, 400), response.get_data(as_text=True)
    if response.status_code == 400:
        assert 'class="error-message"' in response.get_data(as_text=True)
    wait_for_confirmations()


@pytest.mark.parametrize("storage", ["redis://localhost:6379", "nosuch://x"])
def test_a_rate_limit_store_that_cannot_work_is_refused_at_start(
    tmp_path: Path, database: Database, storage: str
) -> None:
    path = signup_config(tmp_path, database.url, None, f'[web]\nrate_limit_storage = "{storage}"\n')

    with pytest.raises(ConfigError, match=r"web\.rate_limit_storage"):
        signup_app(path)
