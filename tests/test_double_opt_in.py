"""Double opt-in end to end: `subscriber add` mails a signed link over real SMTP, the web
app's GET shows a button and changes nothing, POST confirms; links expire."""

from __future__ import annotations

import email
import email.policy
import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import Cli, write_config
from flask import Flask
from flask.testing import FlaskClient
from smtp_faults import FaultyServer

from mailer.config import Config, load_config
from mailer.db import Database
from mailer.web.app import create_app

ANA = "ana@example.com"


def _write(tmp_path: Path, database: Database, smtp: FaultyServer | None, expiry: float = 3600.0) -> Path:
    return write_config(tmp_path / "mailer.toml", database.url, smtp,
                        extra=f"[consent]\nconfirm_expiry = {expiry}\n")


@pytest.fixture
def smtp_cli(tmp_path: Path, database: Database, smtp_server: FaultyServer) -> Cli:
    return Cli(_write(tmp_path, database, smtp_server))


def _app(config_path: Path) -> Flask:
    return create_app(load_config(config_path, environ={}), {"TESTING": True})


@pytest.fixture
def client(smtp_cli: Cli) -> Iterator[FlaskClient]:
    app = _app(smtp_cli.config_path)
    yield app.test_client()
    app.extensions["mailer"].database.dispose()


def _link_path(smtp_server: FaultyServer, index: int = -1) -> str:
    message = email.message_from_bytes(smtp_server.messages[index].data, policy=email.policy.default)
    text = message.get_body(("plain",))
    assert text is not None
    found = re.search(r"https://\S+/confirm/(\S+)", text.get_content())
    assert found is not None, text.get_content()
    return f"/confirm/{found.group(1)}"


def _status(cli: Cli, address: str = ANA) -> str:
    return str(json.loads(cli("subscriber", "show", address, "--json").stdout)["subscriptions"][0]["status"])


def test_adding_to_a_double_opt_in_list_mails_a_signed_link(smtp_cli: Cli, smtp_server: FaultyServer) -> None:
    smtp_cli("list", "create", "news", "--title", "Harmony News", "--double-opt-in")
    smtp_cli("list", "create", "plain")

    out = smtp_cli("subscriber", "add", ANA, "--list", "news", "--name", "Ana Lima").stdout
    smtp_cli("subscriber", "add", "bo@example.com", "--list", "plain")

    assert "sent ana@example.com a confirmation link" in out
    assert _status(smtp_cli) == "unconfirmed"
    assert _status(smtp_cli, "bo@example.com") == "active"
    (received,) = smtp_server.messages  # the single opt-in list sends nothing
    assert received.rcpt_tos == [ANA]
    message = email.message_from_bytes(received.data, policy=email.policy.default)
    assert message["To"] == "Ana Lima <ana@example.com>"
    assert message["Subject"] == "Please confirm your subscription to Harmony News"
    assert message["From"] == "Harmony Mails <news@harmonymails.com>"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["Date"] and message["Message-ID"]
    assert message.get_content_type() == "multipart/alternative"
    html = message.get_body(("html",))
    assert html is not None and "/confirm/" in html.get_content()
    assert "1968 S Coast HWY" in html.get_content()
    assert "Advertisement" not in received.data.decode()
    assert _link_path(smtp_server).startswith("/confirm/")


def test_get_changes_nothing_and_post_confirms_with_ip_and_user_agent(
    smtp_cli: Cli, smtp_server: FaultyServer, client: FlaskClient
) -> None:
    smtp_cli("list", "create", "news", "--title", "Harmony News", "--double-opt-in")
    smtp_cli("subscriber", "add", ANA, "--list", "news")
    path = _link_path(smtp_server)

    for _ in range(2):
        page = client.get(path)
        assert page.status_code == 200
        assert "a•••@example.com" in page.get_data(as_text=True)
        assert page.get_data(as_text=True).count("<button") == 1
    assert _status(smtp_cli) == "unconfirmed"

    done = client.post(path, headers={"User-Agent": "Mozilla/5.0 (Ana's laptop)"},
                       environ_base={"REMOTE_ADDR": "203.0.113.9"})
    again = client.post(path)

    assert done.status_code == 200 and "You are subscribed" in done.get_data(as_text=True)
    assert "Set-Cookie" not in done.headers and "Location" not in done.headers
    assert again.status_code == 200
    assert _status(smtp_cli) == "active"
    exported = json.loads(smtp_cli("subscriber", "export", ANA).stdout)
    confirmation = exported["subscriptions"][0]["confirmation"]
    assert confirmation["ip"] == "203.0.113.9"
    assert confirmation["user_agent"] == "Mozilla/5.0 (Ana's laptop)"
    assert confirmation["at"]
    assert exported["subscriptions"][0]["consent"]["source"] == "cli"
    confirms = [e for e in json.loads(smtp_cli("audit", "ls", "--json").stdout) if e["action"] == "confirm"]
    assert len(confirms) == 1 and confirms[0]["actor"] == "web"


def test_a_confirmation_link_expires(
    tmp_path: Path, database: Database, smtp_server: FaultyServer
) -> None:
    cli = Cli(_write(tmp_path, database, smtp_server, expiry=1))
    cli("list", "create", "news", "--double-opt-in")
    cli("subscriber", "add", ANA, "--list", "news")
    path = _link_path(smtp_server)
    app = _app(cli.config_path)
    client = app.test_client()
    assert client.get(path).status_code == 200  # fresh: works

    time.sleep(2.2)  # itsdangerous counts whole seconds; 2 s is past a 1 s lifetime

    page = client.get(path)
    post = client.post(path)
    assert page.status_code == 400 and post.status_code == 400
    assert "does not work" in post.get_data(as_text=True)
    assert _status(cli) == "unconfirmed"
    # a new link works
    cli("subscriber", "send-confirmation", ANA, "--list", "news")
    assert client.post(_link_path(smtp_server)).status_code == 200
    assert _status(cli) == "active"
    app.extensions["mailer"].database.dispose()


def test_a_tampered_link_is_400_and_changes_nothing(
    smtp_cli: Cli, smtp_server: FaultyServer, client: FlaskClient
) -> None:
    smtp_cli("list", "create", "news", "--double-opt-in")
    smtp_cli("subscriber", "add", ANA, "--list", "news")
    path = _link_path(smtp_server)
    forged = path[:-3] + ("AAA" if not path.endswith("AAA") else "BBB")

    for response in (client.get(forged), client.post(forged), client.post("/confirm/" + "x" * 600)):
        assert response.status_code == 400
        assert "a•••@example.com" not in response.get_data(as_text=True)
    assert _status(smtp_cli) == "unconfirmed"


def test_an_opt_out_before_confirming_is_never_undone_by_the_link(
    smtp_cli: Cli, smtp_server: FaultyServer, client: FlaskClient
) -> None:
    smtp_cli("list", "create", "news", "--double-opt-in")
    smtp_cli("subscriber", "add", ANA, "--list", "news")
    path = _link_path(smtp_server)
    smtp_cli("suppress", "add", ANA)

    response = client.post(path)

    assert response.status_code == 200
    assert "opted out" in response.get_data(as_text=True)
    assert _status(smtp_cli) == "unconfirmed"


def test_the_link_of_an_erased_person_does_not_work(
    smtp_cli: Cli, smtp_server: FaultyServer, client: FlaskClient
) -> None:
    smtp_cli("list", "create", "news", "--double-opt-in")
    smtp_cli("subscriber", "add", ANA, "--list", "news")
    path = _link_path(smtp_server)
    smtp_cli("subscriber", "forget", ANA, "--yes")

    assert client.get(path).status_code == 400
    assert client.post(path).status_code == 400


def test_the_link_of_an_erased_person_never_confirms_the_next_person_to_join(
    smtp_cli: Cli, smtp_server: FaultyServer, client: FlaskClient
) -> None:
    smtp_cli("list", "create", "news", "--double-opt-in")
    smtp_cli("subscriber", "add", ANA, "--list", "news")
    ana_link = _link_path(smtp_server)
    smtp_cli("subscriber", "forget", ANA, "--yes")
    time.sleep(1.1)  # links carry whole seconds: the next person joins clearly after Ana's link
    # SQLite hands the freed row id to the next subscriber: Ana's link now names Bo's id
    smtp_cli("subscriber", "add", "bo@example.com", "--list", "news")

    for response in (client.get(ana_link), client.post(ana_link)):
        assert response.status_code == 400
        assert "b•••@example.com" not in response.get_data(as_text=True)
    assert _status(smtp_cli, "bo@example.com") == "unconfirmed"
    assert client.post(_link_path(smtp_server)).status_code == 200
    assert _status(smtp_cli, "bo@example.com") == "active"


def test_an_international_address_gets_its_link_or_one_clear_line(
    smtp_cli: Cli, smtp_server: FaultyServer
) -> None:
    smtp_cli("list", "create", "news", "--double-opt-in")

    smtp_cli("subscriber", "add", "zoe@exämple.com", "--list", "news")
    refused = smtp_cli("subscriber", "add", "zoë@example.com", "--list", "news", ok=False)

    # a non-ASCII domain goes out in its ASCII (IDNA) form, as campaigns send it
    (received,) = smtp_server.messages
    assert received.rcpt_tos == ["zoe@xn--exmple-cua.com"]
    message = email.message_from_bytes(received.data, policy=email.policy.default)
    assert message["To"] == "zoe@xn--exmple-cua.com"
    # a non-ASCII mailbox name cannot be sent to: refused before anything is stored
    assert refused.exit_code == 1
    assert refused.stderr.strip().splitlines() == [
        "Error: invalid email address 'zoë@example.com': a non-ASCII mailbox name needs SMTPUTF8, "
        "which this mailer does not send"]
    # only the first Zoe is on the list (`show` would refuse the address itself, so it proves nothing)
    listed = json.loads(smtp_cli("subscriber", "ls", "--list", "news", "--json").stdout)
    assert [row["email"] for row in listed] == ["zoe@exämple.com"]


def test_a_relay_that_is_down_leaves_the_subscriber_unconfirmed_with_a_way_to_retry(
    tmp_path: Path, database: Database, config: Config
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the block ends: nothing listens there
    down = FaultyServer("127.0.0.1", port, None)  # type: ignore[arg-type]
    cli = Cli(_write(tmp_path, database, down))
    cli("list", "create", "news", "--double-opt-in")

    result = cli("subscriber", "add", ANA, "--list", "news", ok=False)

    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()
    assert "could not be sent" in line
    assert "mailer subscriber send-confirmation ana@example.com --list news" in line
    assert _status(cli) == "unconfirmed"


def test_the_confirmation_message_is_dkim_signed_when_dkim_is_configured(
    tmp_path: Path, database: Database, smtp_server: FaultyServer
) -> None:
    import dkim
    from compose_helpers import dns_for

    from mailer.content.dkim import generate_key

    record = generate_key(tmp_path / "hm1.pem", "harmonymails.com", "hm1")
    cli = Cli(write_config(
        tmp_path / "mailer.toml", database.url, smtp_server,
        extra=f'[dkim]\ndomain = "harmonymails.com"\nselector = "hm1"\nprivate_key = "{tmp_path / "hm1.pem"}"\n',
    ))
    cli("list", "create", "news", "--double-opt-in")

    cli("subscriber", "add", ANA, "--list", "news")

    (received,) = smtp_server.messages
    assert received.data.startswith(b"DKIM-Signature:")
    assert dkim.verify(received.data, dnsfunc=dns_for(record))
