"""The archive: a sent campaign published with --archive, read by nobody in particular, and its feed."""

from __future__ import annotations

import email
import email.policy
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import Cli
from flask.testing import FlaskClient
from sending_helpers import sending_config
from signup_helpers import signup_app
from smtp_faults import FaultyServer

from mailer.db import Database

ATOM = "{http://www.w3.org/2005/Atom}"
TEMPLATE = """<h1>Hello {{ subscriber.name or "friend" }} in {{ subscriber.attributes.get("city", "") }}</h1>
<p style="color:#115e59">Tickets for the autumn tour, for {{ subscriber.email }}.</p>
{% if view_in_browser_url %}<p><a href="{{ view_in_browser_url }}">Read it on the web</a></p>{% endif %}
<p><a href="{{ unsubscribe_url }}">Leave</a></p>
"""


@pytest.fixture
def cli(tmp_path: Path, database: Database, smtp_server: FaultyServer) -> Cli:
    cli = Cli(sending_config(tmp_path / "mailer.toml", database.url, smtp_server))
    cli("list", "create", "news", "--title", "Harmony News")
    cli("subscriber", "add", "ana@example.com", "--list", "news", "--name", "Ana Lima", "--attr", "city=Lisbon")
    (tmp_path / "tour.html.j2").write_text(TEMPLATE, encoding="utf-8")
    return cli


@pytest.fixture
def client(cli: Cli) -> Iterator[FlaskClient]:
    app = signup_app(cli.config_path)
    yield app.test_client()
    app.extensions["mailer"].database.dispose()


def _create(cli: Cli, subject: str, *extra: str) -> str:
    template = str(cli.config_path.parent / "tour.html.j2")
    out = cli("campaign", "create", "--list", "news", "--subject", subject, "--template", template, *extra)
    return str(out.stdout.strip().splitlines()[-1])


def test_a_published_campaign_is_shown_with_no_ones_data_and_no_working_token(
    cli: Cli, client: FlaskClient, smtp_server: FaultyServer
) -> None:
    campaign_id = _create(cli, "Autumn tour & more", "--archive")
    assert client.get(f"/archive/{campaign_id}").status_code == 404  # a draft went to nobody yet
    cli("campaign", "send", campaign_id)

    page = client.get(f"/archive/{campaign_id}")

    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert "Autumn tour &amp; more" in html and "Tickets for the autumn tour" in html
    assert "Hello friend in </h1>" in html
    for personal in ("Ana", "ana@example.com", "Lisbon"):
        assert personal not in html
    # where the template links to unsubscribe, the reader gets the page that mails their own link
    assert "/u/" not in html and 'href="https://harmonymails.com/preferences"' in html
    assert "Harmony Mails" in html and "1968 S Coast HWY #2045" in html
    # public: no one's data in it, so caches may keep it and search engines may list it
    assert page.headers["Cache-Control"] == "public, max-age=300" and page.headers["X-Robots-Tag"] == "all"
    assert "script-src" not in page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]


def test_the_message_links_to_its_archived_copy_in_both_parts(cli: Cli, smtp_server: FaultyServer) -> None:
    campaign_id = _create(cli, "Autumn tour", "--archive")
    plain_id = _create(cli, "Winter tour")
    cli("campaign", "send", campaign_id)
    cli("campaign", "send", plain_id)

    archived, plain = (email.message_from_bytes(m.data, policy=email.policy.default) for m in smtp_server.messages)

    url = f"https://harmonymails.com/archive/{campaign_id}"
    for kind in ("plain", "html"):
        part = archived.get_body((kind,))
        assert part is not None
        assert f"View this email in your browser: {url}" in part.get_content() if kind == "plain" else (
            f'<a href="{url}"' in part.get_content() and "View this email in your browser" in part.get_content())
        other = plain.get_body((kind,))
        assert other is not None and "View this email" not in other.get_content() and "/archive/" not in other.get_content()
    html_part = archived.get_body(("html",))
    assert html_part is not None and "Read it on the web" in html_part.get_content()


def test_the_archive_lists_newest_first_and_takes_a_campaign_down(cli: Cli, client: FlaskClient) -> None:
    first = _create(cli, "Spring tour", "--archive")
    second = _create(cli, "Summer tour")
    never_sent = _create(cli, "Draft tour", "--archive")
    cli("campaign", "send", first)
    cli("campaign", "send", second)
    assert "is published at https://harmonymails.com/archive/" in cli("campaign", "archive", second, "on").stdout

    listed = client.get("/archive").get_data(as_text=True)
    assert re.findall(r'href="/archive/(\d+)"', listed) == [second, first]
    assert "Draft tour" not in listed
    assert client.get(f"/archive/{never_sent}").status_code == 404

    assert "not in the archive" in cli("campaign", "archive", first, "off").stdout
    assert client.get(f"/archive/{first}").status_code == 404
    assert re.findall(r'href="/archive/(\d+)"', client.get("/archive").get_data(as_text=True)) == [second]
    assert cli("campaign", "archive", "999", "on", ok=False).exit_code != 0
    actions = cli("audit", "ls").stdout
    assert "unarchive" in actions


def test_the_feed_is_atom_that_parses_with_every_subject_escaped(cli: Cli, client: FlaskClient) -> None:
    older = _create(cli, "Tour <dates> & prices", "--archive")
    newer = _create(cli, "Workshop \"week\" ahead", "--archive")
    cli("campaign", "send", older)
    cli("campaign", "send", newer)

    response = client.get("/archive/feed")

    assert response.mimetype == "application/atom+xml"
    feed = ET.fromstring(response.data)
    assert feed.tag == f"{ATOM}feed"
    titles = [e.findtext(f"{ATOM}title") for e in feed.findall(f"{ATOM}entry")]
    assert titles == ['Workshop "week" ahead', "Tour <dates> & prices"]
    links = [e.find(f"{ATOM}link").get("href") for e in feed.findall(f"{ATOM}entry")]  # type: ignore[union-attr]
    assert links == [f"https://harmonymails.com/archive/{newer}", f"https://harmonymails.com/archive/{older}"]
    assert b"ana@example.com" not in response.data
    assert '<link rel="alternate" type="application/atom+xml"' in client.get("/archive").get_data(as_text=True)
