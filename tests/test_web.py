"""The unsubscribe web app through Flask's test client, as mail clients and recipients use it."""

from __future__ import annotations

import contextlib
import http.client
import io
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import sqlalchemy as sa
from cli_helpers import Cli
from flask import Flask
from flask.testing import FlaskClient
from itsdangerous import URLSafeSerializer
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
from serve_helpers import free_port, start_serve, stop_serve

from mailer.config import Config, UnsubscribeScope, load_config
from mailer.db import Database, address_hash
from mailer.errors import ConfigError
from mailer.models import Subscription, SubscriptionStatus, SuppressionReason
from mailer.recipients.confirm import confirm_url
from mailer.recipients.lists import create_list
from mailer.recipients.subscribers import Consent, add_subscriber
from mailer.tokens import UNSUBSCRIBE_SALT, make_unsubscribe_token
from mailer.web.app import create_app

ONE_CLICK = {"List-Unsubscribe": "One-Click"}
GMAIL_UA = "Mozilla/5.0 (compatible; Google-Unsubscribe)"


@pytest.fixture
def make_app() -> Iterator[Callable[[Config], Flask]]:
    """create_app, with every app's database connections closed at the end of the test."""
    made: list[Flask] = []

    def factory(config: Config) -> Flask:
        made.append(create_app(config, {"TESTING": True}))
        return made[-1]

    yield factory
    for application in made:
        application.extensions["mailer"].database.dispose()


@pytest.fixture
def app(config: Config, make_app: Callable[[Config], Flask]) -> Flask:
    return make_app(config)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def ana(database: Database) -> Person:
    make_lists(database, "news", "offers")
    return add_person(database, "Ana.Lima@Example.com", "news", "offers")


def assert_safe_headers(response: object) -> None:
    headers = response.headers  # type: ignore[attr-defined]
    assert headers["Referrer-Policy"] == "no-referrer"
    csp = headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp and "unsafe-inline" not in csp
    assert "form-action 'self'" in csp
    assert "Set-Cookie" not in headers
    assert "Location" not in headers


def test_get_shows_the_masked_address_and_one_button_and_changes_nothing(
    client: FlaskClient, database: Database, config: Config, ana: Person
) -> None:
    before = snapshot(database)
    for method in (client.get, client.head, client.get):
        response = method(f"/u/{ana.token(config)}")
        assert response.status_code == 200
        assert_safe_headers(response)
    page = client.get(f"/u/{ana.token(config)}").get_data(as_text=True)
    assert "A•••@example.com" in page
    assert "Ana.Lima" not in page and "ana.lima" not in page
    assert page.count("<button") == 1 and page.count("<form") == 1
    assert '<form method="post"' in page
    assert "<script" not in page
    assert snapshot(database) == before


@pytest.mark.parametrize("encoding", ["urlencoded", "multipart"])
def test_one_click_post_unsubscribes_with_200_no_redirect_no_cookie(
    client: FlaskClient, database: Database, config: Config, ana: Person, encoding: str
) -> None:
    if encoding == "urlencoded":
        response = client.post(f"/u/{ana.token(config)}", data=ONE_CLICK, headers={"User-Agent": GMAIL_UA},
                               environ_base={"REMOTE_ADDR": "203.0.113.7"})
    else:
        response = client.post(
            f"/u/{ana.token(config)}", data={**ONE_CLICK, "unused": (io.BytesIO(b""), "")},
            content_type="multipart/form-data", headers={"User-Agent": GMAIL_UA},
            environ_base={"REMOTE_ADDR": "203.0.113.7"},
        )
        assert response.request.content_type.startswith("multipart/form-data")
    assert response.status_code == 200
    assert_safe_headers(response)
    assert "You are unsubscribed" in response.get_data(as_text=True)
    [entry] = suppressions(database)
    assert entry.address_hash == address_hash("ana.lima@example.com")
    assert entry.reason is SuppressionReason.UNSUBSCRIBED
    assert (entry.source, entry.ip, entry.user_agent) == ("one-click", "203.0.113.7", GMAIL_UA)
    assert statuses(database, ana) == {"news": SubscriptionStatus.UNSUBSCRIBED,
                                       "offers": SubscriptionStatus.UNSUBSCRIBED}
    [event] = audit_events(database)
    assert event.actor == "web" and event.reason == "one-click"
    assert event.detail["ip"] == "203.0.113.7" and event.detail["user_agent"] == GMAIL_UA


@pytest.mark.parametrize("scope", [UnsubscribeScope.ALL, UnsubscribeScope.LIST])
def test_the_confirmation_promises_no_way_back_the_mailer_refuses(
    database: Database, config: Config, ana: Person, make_app: Callable[[Config], Flask],
    config_path: Path, scope: UnsubscribeScope,
) -> None:
    scoped = replace(config, unsubscribe=replace(config.unsubscribe, scope=scope))
    page = make_app(scoped).test_client().post(f"/u/{ana.token(config)}", data=ONE_CLICK).get_data(as_text=True)
    # an opted-out address is never subscribed again by the marketer, so the page must not offer it
    added_back = Cli(config_path)("subscriber", "add", ana.email, "--list", "news", ok=False)
    assert added_back.exit_code == 1, added_back.stdout
    assert "add you back" not in page and "subscribe you again" not in page


def test_with_scope_list_the_page_asks_about_the_list_the_button_leaves(
    database: Database, config: Config, ana: Person, make_app: Callable[[Config], Flask],
) -> None:
    client = make_app(replace(config, unsubscribe=replace(config.unsubscribe, scope=UnsubscribeScope.LIST))).test_client()
    url = f"/u/{ana.token(config, 'offers')}"
    asked = client.get(url).get_data(as_text=True)
    assert "Stop email from the list <strong>Offers</strong>" in asked
    assert "Stop marketing email from" not in asked
    done = client.post(url, data={"via": "page"}).get_data(as_text=True)
    assert "the list <strong>Offers</strong>" in done
    assert statuses(database, ana) == {"news": SubscriptionStatus.ACTIVE, "offers": SubscriptionStatus.UNSUBSCRIBED}


def test_the_page_button_records_source_page(
    client: FlaskClient, database: Database, config: Config, ana: Person
) -> None:
    response = client.post(f"/u/{ana.token(config, campaign_id=7)}", data={"via": "page"})
    assert response.status_code == 200
    assert suppressions(database)[0].source == "page"
    assert audit_events(database)[0].detail["campaign_id"] == 7


def test_repeating_the_post_is_harmless(
    client: FlaskClient, database: Database, config: Config, ana: Person
) -> None:
    token = ana.token(config)
    for _ in range(3):
        response = client.post(f"/u/{token}", data=ONE_CLICK)
        assert response.status_code == 200
        assert "You are unsubscribed" in response.get_data(as_text=True)
    assert len(suppressions(database)) == 1
    assert len(audit_events(database)) == 1


def test_scope_list_leaves_only_that_list_and_suppresses_nothing(
    tmp_path: Path, database: Database, config: Config, ana: Person, make_app: Callable[[Config], Flask]) -> None:
    config = replace(config, unsubscribe=replace(config.unsubscribe, scope=UnsubscribeScope.LIST))
    client = make_app(config).test_client()
    response = client.post(f"/u/{ana.token(config, 'offers')}", data=ONE_CLICK)
    assert response.status_code == 200
    assert "the list <strong>Offers</strong>" in response.get_data(as_text=True)
    assert statuses(database, ana) == {"news": SubscriptionStatus.ACTIVE,
                                       "offers": SubscriptionStatus.UNSUBSCRIBED}
    assert suppressions(database) == []
    [event] = audit_events(database)
    assert event.detail["scope"] == "list" and event.detail["lists"] == ["Offers"]


def forged_tokens(config: Config, person: Person) -> dict[str, str]:
    good = person.token(config)
    other_key = URLSafeSerializer("another-key-0123456789abcdef", salt=UNSUBSCRIBE_SALT,
                                  signer_kwargs={"digest_method": __import__("hashlib").sha256})
    payload, _, signature = good.rpartition(".")
    flipped = signature[:-1] + ("A" if signature[-1] != "A" else "B")
    return {
        "tampered signature": f"{payload}.{flipped}",
        "truncated": good[:-5],
        "payload only": payload,
        "someone else's id": make_unsubscribe_token(["another-key-0123456789abcdef"], person.subscriber_id, 1),
        "re-signed with another key": str(other_key.dumps([person.subscriber_id, None, None])),
        "oversized": good + "A" * 5000,
        "garbage": "not-a-token",
        "slashes": f"{good}/../../etc/passwd",
        "unicode": "ünïcödé.tökén",
    }


def test_forged_truncated_foreign_and_oversized_tokens_get_400_and_change_nothing(
    client: FlaskClient, database: Database, config: Config, ana: Person
) -> None:
    before = snapshot(database)
    bodies: set[str] = set()
    for name, token in forged_tokens(config, ana).items():
        for response in (client.get(f"/u/{token}"), client.post(f"/u/{token}", data=ONE_CLICK)):
            assert response.status_code == 400, name
            assert_safe_headers(response)
            body = response.get_data(as_text=True)
            assert "unsubscribe@harmonymails.com" in body, name
            assert "1968 S Coast HWY" in body
            assert "@example.com" not in body and "•••" not in body
            bodies.add(body)
    # one page for every kind of bad link: nothing tells a known address from an unknown one
    assert len(bodies) == 1
    assert snapshot(database) == before


def test_a_token_for_an_erased_subscriber_reveals_nothing_and_changes_nothing(
    client: FlaskClient, database: Database, config: Config, ana: Person
) -> None:
    bob = add_person(database, "bob@example.org", "news")
    erase(database, bob)
    before = snapshot(database)
    page = client.get(f"/u/{bob.token(config)}")
    assert page.status_code == 200 and "•••" not in page.get_data(as_text=True)
    done = client.post(f"/u/{bob.token(config)}", data=ONE_CLICK)
    assert done.status_code == 200
    assert "example.org" not in done.get_data(as_text=True)
    assert snapshot(database) == before


def test_oversized_body_gets_413_and_changes_nothing(
    client: FlaskClient, database: Database, config: Config, ana: Person
) -> None:
    before = snapshot(database)
    response = client.post(f"/u/{ana.token(config)}", data={**ONE_CLICK, "x": "A" * 100_000})
    assert response.status_code == 413
    assert_safe_headers(response)
    assert snapshot(database) == before


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_get_405(
    client: FlaskClient, database: Database, config: Config, ana: Person, method: str
) -> None:
    before = snapshot(database)
    response = client.open(f"/u/{ana.token(config)}", method=method, data=ONE_CLICK)
    assert response.status_code == 405
    assert set(response.headers["Allow"].replace(" ", "").split(",")) >= {"GET", "POST"}
    assert_safe_headers(response)
    assert snapshot(database) == before


def test_pages_load_nothing_from_elsewhere_and_need_no_script(
    client: FlaskClient, config: Config, ana: Person
) -> None:
    pages = [client.get(f"/u/{ana.token(config)}"), client.get("/u/bad.token"),
             client.post(f"/u/{ana.token(config)}", data=ONE_CLICK)]
    for response in pages:
        html = response.get_data(as_text=True)
        assert "<script" not in html
        assert not re.search(r"\son[a-z]+=", html), "inline event handlers need script"
        assets = re.findall(r'<(?:link|img|script|iframe)[^>]+(?:href|src)="([^"]+)"', html)
        assert assets == ["/assets/web.css"]
        assert '<html lang="en">' in html and "<main" in html and "<h1" in html
    css = client.get("/assets/web.css")
    assert css.status_code == 200 and css.mimetype == "text/css"
    assert "url(" not in css.get_data(as_text=True) and "@import" not in css.get_data(as_text=True)


def test_healthz(client: FlaskClient, tmp_path: Path, config: Config, make_app: Callable[[Config], Flask]) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json == {"status": "ok"}
    broken = replace(config, database=replace(config.database, url=f"sqlite:///{tmp_path}/no/such/dir.db"))
    assert make_app(broken).test_client().get("/healthz").status_code == 503


def test_unknown_path_is_404_page(client: FlaskClient) -> None:
    response = client.get("/nothing-here")
    assert response.status_code == 404
    assert_safe_headers(response)


def test_forwarded_for_is_believed_only_from_trusted_proxies(
    database: Database, config: Config, ana: Person, make_app: Callable[[Config], Flask]) -> None:
    bob = add_person(database, "bob@example.org", "news")
    headers = {"X-Forwarded-For": "198.51.100.23"}
    env = {"REMOTE_ADDR": "10.0.0.2"}
    make_app(config).test_client().post(f"/u/{ana.token(config)}", data=ONE_CLICK, headers=headers,
                                          environ_base=env)
    proxied = replace(config, unsubscribe=replace(config.unsubscribe, trusted_proxies=1))
    make_app(proxied).test_client().post(f"/u/{bob.token(config)}", data=ONE_CLICK, headers=headers,
                                           environ_base=env)
    assert [s.ip for s in suppressions(database)] == ["10.0.0.2", "198.51.100.23"]


def test_create_app_refuses_a_config_without_signing_keys(config: Config) -> None:
    keyless = replace(config, unsubscribe=replace(config.unsubscribe, secret_keys=()))
    with pytest.raises(ConfigError, match="secret_keys"):
        create_app(keyless)


def test_old_links_keep_working_after_a_key_rotation(
    database: Database, config: Config, ana: Person, make_app: Callable[[Config], Flask]) -> None:
    old_token = ana.token(config)
    rotated = replace(config, unsubscribe=replace(
        config.unsubscribe, secret_keys=("a-brand-new-signing-key-0123", *config.unsubscribe.secret_keys)))
    response = make_app(rotated).test_client().post(f"/u/{old_token}", data=ONE_CLICK)
    assert response.status_code == 200
    assert len(suppressions(database)) == 1


def test_mailer_serve_answers_one_click_over_http(
    config_path: Path, database: Database, ana: Person
) -> None:
    config = load_config(config_path, environ={})
    port = free_port()
    server = start_serve(config_path, port)
    base = f"http://127.0.0.1:{port}"
    try:
        request = urllib.request.Request(f"{base}/u/{ana.token(config)}", data=b"List-Unsubscribe=One-Click",
                                         method="POST")
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200
            assert response.headers["Set-Cookie"] is None
        assert len(suppressions(database)) == 1
    finally:
        output = stop_serve(server)
    assert f"http://127.0.0.1:{port}" in output


def test_mailer_serve_stopped_by_sigterm_records_the_opt_out_in_flight(
    config_path: Path, database: Database, ana: Person
) -> None:
    config = load_config(config_path, environ={})
    port = free_port()
    server = start_serve(config_path, port)
    request = urllib.request.Request(f"http://127.0.0.1:{port}/u/{ana.token(config)}",
                                     data=b"List-Unsubscribe=One-Click", method="POST")

    def post() -> None:
        # the answer may be cut off by the stop; what matters is what was recorded
        with contextlib.suppress(OSError), urllib.request.urlopen(request, timeout=10) as response:
            response.read()

    click = threading.Thread(target=post)
    try:
        # a long write elsewhere keeps the POST waiting inside the server while systemd stops it
        with database.session() as session:
            session.execute(sa.text("UPDATE subscriptions SET status = status"))
            click.start()
            time.sleep(0.5)
            server.send_signal(signal.SIGTERM)
            time.sleep(0.5)
        assert server.wait(timeout=15) == 0
    finally:
        if server.poll() is None:
            server.kill()
        server.communicate(timeout=10)
        click.join(timeout=15)
    assert len(suppressions(database)) == 1
    assert len(audit_events(database)) == 1


def _post_from(source: str, port: int, path: str, headers: dict[str, str],
               body: bytes = b"List-Unsubscribe=One-Click") -> http.client.HTTPResponse:
    """A form POST whose TCP connection comes from `source` (any 127.x address is this host)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
    connection.request("POST", path, body=body,
                       headers={"Content-Type": "application/x-www-form-urlencoded", **headers})
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


def test_mailer_serve_believes_forwarded_headers_only_from_the_trusted_proxy(
    config_path: Path, database: Database, ana: Person
) -> None:
    # nginx on 127.0.0.2 is the trusted proxy; anyone else reaching the port (here 127.0.0.1) is not
    config_path.write_text(config_path.read_text(encoding="utf-8").replace(
        "[unsubscribe]\n", '[unsubscribe]\ntrusted_proxies = 1\ntrusted_proxy_address = "127.0.0.2"\n'),
        encoding="utf-8")
    config = load_config(config_path, environ={})
    bob = add_person(database, "bob@example.org", "news")
    eve = add_person(database, "eve@example.org", "news")
    with database.session() as session:
        club = create_list(session, "club", double_opt_in=True)
        zoe, _ = add_subscriber(session, "zoe@example.org", "club", Consent(source="test"))
        assert zoe is not None
        confirm_path = urllib.parse.urlsplit(confirm_url(config, zoe.id, club.id)).path
    port = free_port()
    server = start_serve(config_path, port)
    https = {"X-Forwarded-Proto": "https"}
    try:
        proxied = _post_from("127.0.0.2", port, f"/u/{ana.token(config)}",
                             {"X-Forwarded-For": "198.51.100.23", **https})
        # a client that writes its own X-Forwarded-For gets one more hop than the proxy adds
        spoofed = _post_from("127.0.0.2", port, f"/u/{bob.token(config)}",
                             {"X-Forwarded-For": "203.0.113.66, 198.51.100.24", **https})
        direct = _post_from("127.0.0.1", port, f"/u/{eve.token(config)}",
                            {"X-Forwarded-For": "203.0.113.67", **https})
        # the double opt-in click records the consent IP the same way
        confirmed = _post_from("127.0.0.2", port, confirm_path, {"X-Forwarded-For": "198.51.100.30"}, b"")
    finally:
        stop_serve(server)
    assert [proxied.status, spoofed.status, direct.status, confirmed.status] == [200, 200, 200, 200]
    with database.session() as session:
        assert session.scalar(sa.select(Subscription.confirmed_ip).where(Subscription.list_id == club.id)) \
            == "198.51.100.30"
    assert {s.email: s.ip for s in suppressions(database)} == {
        "ana.lima@example.com": "198.51.100.23",
        "bob@example.org": "198.51.100.24",
        "eve@example.org": "127.0.0.1",
    }
    assert proxied.headers["Strict-Transport-Security"] == "max-age=31536000"
    assert direct.headers["Strict-Transport-Security"] is None


def test_mailer_serve_on_a_port_in_use_says_so_in_one_line(config_path: Path, database: Database) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # a subprocess, as run for real: waitress leaves its half-made sockets to the garbage collector
        result = subprocess.run(
            [sys.executable, "-m", "mailer", "--config", str(config_path), "serve", "--port", str(port)],
            capture_output=True, text=True, timeout=30,
        )
    assert result.returncode == 1
    assert result.stderr.strip() == f"Error: cannot listen on 127.0.0.1:{port}: Address already in use"


def test_the_page_and_healthz_do_not_wait_for_a_writer(
    client: FlaskClient, database: Database, config: Config, ana: Person
) -> None:
    # a long write elsewhere (an import, a send) holds SQLite's write lock; readers must not queue
    with database.session() as session:
        session.execute(sa.text("UPDATE mailing_lists SET title = title"))
        started = time.monotonic()
        assert client.get(f"/u/{ana.token(config)}").status_code == 200
        assert client.get("/healthz").status_code == 200
        assert time.monotonic() - started < 5


def test_https_pages_ask_browsers_to_stay_on_https(
    database: Database, config: Config, ana: Person, make_app: Callable[[Config], Flask]
) -> None:
    proxied = replace(config, unsubscribe=replace(config.unsubscribe, trusted_proxies=1))
    client = make_app(proxied).test_client()
    plain = client.get(f"/u/{ana.token(config)}")
    behind_tls = client.get(f"/u/{ana.token(config)}", headers={"X-Forwarded-Proto": "https"})
    assert "Strict-Transport-Security" not in plain.headers
    assert behind_tls.headers["Strict-Transport-Security"] == "max-age=31536000"
