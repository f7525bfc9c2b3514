"""`mailer campaign create|ls|check|preview|test` as a marketer uses them, on a real database and SMTP server."""

from __future__ import annotations

import json
import socket
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cli_helpers import Cli, write_config
from compose_helpers import parse, parts
from smtp_faults import FaultyServer

from mailer.config import UnsubscribeScope, load_config
from mailer.content.compliance import check_message
from mailer.content.compose import SAMPLE_SUBSCRIBER_ID, RenderedMessage
from mailer.db import Database
from mailer.models import Subscriber
from mailer.recipients.optout import unsubscribe
from mailer.tokens import UnsubscribeClaim, read_unsubscribe_token
from mailer.verp import parse_return_path


@pytest.fixture
def news(cli: Cli) -> Cli:
    """A list with two subscribers, one with a city attribute."""
    cli("list", "create", "news", "--title", "Harmony News")
    cli("subscriber", "add", "ana@example.com", "--list", "news", "--name", "Ana Lima", "--attr", "city=Lisbon")
    cli("subscriber", "add", "bo@example.com", "--list", "news", "--name", "Bo Chen")
    return cli


def campaigns(cli: Cli) -> list[dict[str, object]]:
    data: list[dict[str, object]] = json.loads(cli("campaign", "ls", "--json").output)
    return data


def test_create_from_a_shipped_name_prints_the_id(news: Cli) -> None:
    result = news("campaign", "create", "--list", "news", "--subject", "Welcome to Harmony News",
                  "--template", "welcome")
    assert result.output == "1\n"
    assert result.stderr == ""
    second = news("campaign", "create", "--list", "news", "--subject", "Summer concerts", "--template",
                  "announcement")
    assert second.output == "2\n"
    listed = campaigns(news)
    assert [(c["id"], c["status"], c["list_name"], c["subject"]) for c in listed] == [
        (2, "draft", "news", "Summer concerts"), (1, "draft", "news", "Welcome to Harmony News")]
    table = news("campaign", "ls").output
    assert "Welcome to Harmony News" in table and "draft" in table


def test_template_text_is_stored_so_later_file_edits_change_nothing(news: Cli, tmp_path: Path) -> None:
    html = tmp_path / "promo.html.j2"
    html.write_text("<h1>Hi {{ subscriber.name }}</h1><p>Original HTML</p>", encoding="utf-8")
    (tmp_path / "promo.txt.j2").write_text("Hi {{ subscriber.name }}\nOriginal text\n", encoding="utf-8")
    news("campaign", "create", "--list", "news", "--subject", "Promo", "--template", str(html))
    html.write_text("<p>Changed</p>", encoding="utf-8")
    (tmp_path / "promo.txt.j2").unlink()
    raw = news("campaign", "preview", "1", "--email", "ana@example.com", "--raw").stdout_bytes
    text, body = parts(parse(raw))
    assert "Hi Ana Lima\nOriginal text" in text
    assert "Original HTML" in body and "Changed" not in body


def test_html_only_template_gets_a_derived_text_part(news: Cli, tmp_path: Path) -> None:
    html = tmp_path / "only.html.j2"
    html.write_text("<h2>Summer concerts</h2><p>Six <b>open-air</b> evenings.</p>", encoding="utf-8")
    news("campaign", "create", "--list", "news", "--subject", "Summer concerts", "--template", str(html))
    text, _ = parts(parse(news("campaign", "preview", "1", "--raw").stdout_bytes))
    assert "Summer concerts" in text and "Six open-air evenings." in text and "<b>" not in text


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--template", "no-such-template"], "template 'no-such-template' not found"),
        (["--template", "{syntax}"], "does not parse: line 1"),
        (["--template", "{unknown}"], "undefined"),
        (["--template", "{attr}"], "fails"),
        (["--template", "welcome", "--subject", "Hello\nBcc: x@evil.test"], "line break"),
        (["--template", "welcome", "--from", "Deals <deals@elsewhere.example>"], "sending domain"),
        (["--template", "welcome", "--list", "nope"], "no list named 'nope'"),
        (["--template", "{link}"], "Error: external stylesheets (<link rel=stylesheet>) are not allowed"),
        (["--template", "{import}"], "Error: @import is not allowed in a template's <style>"),
    ],
    ids=["missing", "syntax", "unknown-variable", "attribute-some-lack", "subject-crlf", "from-domain", "list",
         "link-stylesheet", "import"],
)
def test_bad_input_is_one_clear_line_and_stores_nothing(
    news: Cli, tmp_path: Path, args: list[str], expected: str
) -> None:
    templates = {
        "{syntax}": "<p>{% if %}</p>",
        "{unknown}": "<p>{{ discount_code }}</p>",
        "{attr}": "<p>Hello from {{ subscriber.attributes.city }}</p>",  # bo has no city
        "{link}": '<link rel="stylesheet" href="https://fonts.example/a.css"><p>Spring concerts</p>',
        "{import}": "<style>@import url(https://fonts.example/a.css);</style><p>Spring concerts</p>",
    }
    resolved = []
    for arg in args:
        if arg in templates:
            path = tmp_path / "bad.html.j2"
            path.write_text(templates[arg], encoding="utf-8")
            arg = str(path)
        resolved.append(arg)
    base = {"--list": "news", "--subject": "Spring concerts"}
    for i in range(0, len(resolved), 2):
        base[resolved[i]] = resolved[i + 1]
    result = news("campaign", "create", *[x for pair in base.items() for x in pair], ok=False)
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, result.stderr
    assert expected in result.stderr
    assert campaigns(news) == []


def test_check_passes_a_good_campaign_and_lists_every_problem_of_a_bad_one(news: Cli) -> None:
    news("campaign", "create", "--list", "news", "--subject", "Welcome to Harmony News", "--template", "welcome")
    good = news("campaign", "check", "1")
    assert good.output == "campaign 1 passes the compliance gate\n"
    created = news("campaign", "create", "--list", "news", "--subject", "RE: BIG SALE", "--template", "welcome")
    assert created.stdout == "2\n"
    assert "warning: the subject 'RE: BIG SALE' pretends to be a reply or forward" in created.stderr
    bad = news("campaign", "check", "2", ok=False)
    assert bad.exit_code == 1
    assert "fails the compliance gate" in bad.stderr
    assert "pretends to be a reply or forward" in bad.stderr
    assert "all capitals" in bad.stderr
    as_json = json.loads(news("campaign", "check", "2", "--json", ok=False).output)
    assert as_json["ok"] is False and len(as_json["problems"]) == 2
    missing = news("campaign", "check", "99", ok=False)
    assert missing.exit_code == 1 and "no campaign with id 99" in missing.stderr


def test_preview_shows_the_message_for_a_chosen_subscriber(news: Cli, tmp_path: Path) -> None:
    news("campaign", "create", "--list", "news", "--subject", "Welcome to Harmony News", "--template", "welcome")
    shown = news("campaign", "preview", "1", "--email", "bo@example.com").output
    assert "To: Bo Chen <bo@example.com>" in shown
    assert "Subject: Welcome to Harmony News" in shown
    assert "List-Unsubscribe: <https://harmonymails.com/u/" in shown
    assert "Welcome aboard, Bo!" in shown
    assert "Advertisement. This email is a commercial message from Harmony Mails" in shown
    page = tmp_path / "preview.html"
    news("campaign", "preview", "1", "--email", "ana@example.com", "--html", str(page))
    html = page.read_text(encoding="utf-8")
    assert html.lstrip().startswith("<!DOCTYPE html>") and "Welcome aboard, Ana!" in html
    assert "from Lisbon" in html
    unknown = news("campaign", "preview", "1", "--email", "zoe@example.com", ok=False)
    assert unknown.exit_code == 1 and "not on the campaign's list" in unknown.stderr


def test_preview_raw_prints_the_exact_compliant_bytes(news: Cli) -> None:
    news("campaign", "create", "--list", "news", "--subject", "Welcome to Harmony News", "--template", "welcome")
    raw = news("campaign", "preview", "1", "--email", "ana@example.com", "--raw").stdout_bytes
    assert raw.startswith(b"From: ") and b"\n" not in raw.replace(b"\r\n", b"")
    message = parse(raw)
    assert message.defects == []
    assert str(message["To"]) == "Ana Lima <ana@example.com>"
    config = load_config(news.config_path, environ={})
    rendered = RenderedMessage("", "ana@example.com", str(message["Message-ID"]), raw)
    assert check_message(config, rendered) == []


def smtp_cli(tmp_path: Path, news: Cli, server: FaultyServer | None, extra: str = "") -> Cli:
    db_url = load_config(news.config_path, environ={}).database.url
    return Cli(write_config(tmp_path / "smtp.toml", db_url, smtp=server, extra=extra))


def test_test_send_delivers_one_real_message_marked_as_a_test(
    news: Cli, tmp_path: Path, smtp_server: FaultyServer
) -> None:
    news("campaign", "create", "--list", "news", "--subject", "Welcome to Harmony News", "--template", "welcome")
    sender = smtp_cli(tmp_path, news, smtp_server)
    result = sender("campaign", "test", "1", "--to", "me@harmonymails.com")
    assert result.output.startswith("sent a test of campaign 1 to me@harmonymails.com")
    assert len(smtp_server.messages) == 1
    received = smtp_server.messages[0]
    assert received.rcpt_tos == ["me@harmonymails.com"]
    config = load_config(sender.config_path, environ={})
    assert received.mail_from.endswith("@bounces.harmonymails.com")
    assert parse_return_path(config, received.mail_from) == 0  # no delivery row: bounces map to nothing
    message = parse(received.data)
    assert message.defects == []
    assert str(message["Subject"]) == "[TEST] Welcome to Harmony News"
    assert str(message["To"]) == "Sample Subscriber <me@harmonymails.com>"
    rendered = RenderedMessage(received.mail_from, "me@harmonymails.com", str(message["Message-ID"]),
                               received.data)
    assert check_message(config, rendered) == []
    # a subscriber's own address gets their own data
    sender("campaign", "test", "1", "--to", "ana@example.com")
    assert "Welcome aboard, Ana!" in parts(parse(smtp_server.messages[1].data))[0]


def test_test_send_with_starttls_required_goes_in_clear_only_on_loopback(
    news: Cli, tmp_path: Path, smtp_server: FaultyServer
) -> None:
    news("campaign", "create", "--list", "news", "--subject", "Welcome to Harmony News", "--template", "welcome")
    extra = f'[smtp]\nhost = "127.0.0.1"\nport = {smtp_server.port}\nstarttls = "required"\ntimeout = 5\n'
    sender = smtp_cli(tmp_path, news, None, extra)
    sender("campaign", "test", "1", "--to", "me@harmonymails.com")
    assert len(smtp_server.messages) == 1


def test_test_send_to_a_relay_that_is_down_is_one_clear_line(news: Cli, tmp_path: Path) -> None:
    news("campaign", "create", "--list", "news", "--subject", "Welcome to Harmony News", "--template", "welcome")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    extra = f'[smtp]\nhost = "127.0.0.1"\nport = {port}\nstarttls = "off"\ntimeout = 2\n'
    result = smtp_cli(tmp_path, news, None, extra)("campaign", "test", "1", "--to", "me@harmonymails.com",
                                                   ok=False)
    assert result.exit_code == 1
    assert "cannot send through 127.0.0.1" in result.stderr and result.stderr.count("\n") == 1
    bad_address = smtp_cli(tmp_path, news, None, extra)("campaign", "test", "1", "--to", "not-an-address",
                                                        ok=False)
    assert "invalid email address" in bad_address.stderr


def test_example_campaign_looks_right_in_chromium_on_desktop_and_phone(
    news: Cli, tmp_path: Path, browser: Any
) -> None:
    from selenium.webdriver.common.by import By

    news("campaign", "create", "--list", "news", "--subject", "Welcome to Harmony News", "--template", "welcome")
    page = tmp_path / "preview.html"
    news("campaign", "preview", "1", "--email", "ana@example.com", "--html", str(page))
    for width in (1024, 375):
        browser.set_window_size(width, 900)
        browser.get(page.as_uri())
        assert browser.title == "Welcome to Harmony News"
        heading = browser.find_element(By.TAG_NAME, "h1")
        assert heading.is_displayed() and heading.text == "Welcome aboard, Ana!"
        footer = browser.find_element(By.CLASS_NAME, "hm-footer")
        assert footer.is_displayed()
        assert "Advertisement." in footer.text
        assert "1968 S Coast HWY #2045, Laguna Beach, California 92651, United States" in footer.text
        assert "because you subscribed to Harmony News" in footer.text
        assert float(footer.value_of_css_property("font-size").removesuffix("px")) >= 12
        link = browser.find_element(By.LINK_TEXT, "Unsubscribe with one click")
        assert link.is_displayed() and link.get_attribute("href").startswith("https://harmonymails.com/u/")
        privacy = browser.find_element(By.LINK_TEXT, "privacy policy")
        assert privacy.is_displayed() and privacy.get_attribute("href") == "https://harmonymails.com/privacy"
        # nothing sticks out sideways: no horizontal scrolling on a phone
        overflow = browser.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, (width, overflow)
        button = browser.find_element(By.LINK_TEXT, "See the workshops")
        assert button.rect["x"] >= 0 and button.rect["x"] + button.rect["width"] <= width


def test_preview_of_a_list_with_nobody_on_it_uses_a_sample_subscriber(cli: Cli, tmp_path: Path) -> None:
    cli("list", "create", "empty")
    page = tmp_path / "card.html.j2"
    page.write_text("<p>Hello {{ subscriber.name }} from {{ subscriber.attributes.city }}</p>", encoding="utf-8")
    cli("campaign", "create", "--list", "empty", "--subject", "Hello", "--template", str(page))
    shown = cli("campaign", "preview", "1").output
    assert "To: Sample Subscriber <subscriber@example.com>" in shown
    assert "Hello Sample Subscriber from [city]" in shown


def test_unreadable_dkim_key_is_one_line_and_stores_nothing(news: Cli, tmp_path: Path) -> None:
    db_url = load_config(news.config_path, environ={}).database.url
    extra = (f'[dkim]\ndomain = "harmonymails.com"\nselector = "hm1"\n'
             f'private_key = "{tmp_path / "missing.pem"}"\n')
    signed = Cli(write_config(tmp_path / "dkim.toml", db_url, extra=extra))
    result = signed("campaign", "create", "--list", "news", "--subject", "Welcome", "--template", "welcome",
                    ok=False)
    assert result.exit_code == 1
    assert "dkim.private_key: cannot read" in result.stderr and result.stderr.count("\n") == 1
    assert campaigns(news) == []


def test_preview_without_email_uses_a_sample_whose_link_unsubscribes_nobody(news: Cli) -> None:
    news("campaign", "create", "--list", "news", "--subject", "Welcome to Harmony News", "--template", "welcome")
    raw = news("campaign", "preview", "1", "--raw").stdout_bytes
    message = parse(raw)
    assert str(message["To"]) == "Sample Subscriber <subscriber@example.com>"
    token = str(message["List-Unsubscribe"]).split("/u/")[1].split(">")[0]
    config = load_config(news.config_path, environ={})
    claim = read_unsubscribe_token(config.unsubscribe.secret_keys, token)
    assert claim.subscriber_id == SAMPLE_SUBSCRIBER_ID


def test_check_renders_for_a_subscriber_without_a_name_too(news: Cli, tmp_path: Path) -> None:
    news("subscriber", "add", "noname@example.com", "--list", "news", "--attr", "city=Porto")
    page = tmp_path / "first.html.j2"
    page.write_text("<p>Hi {{ subscriber.name.split()[0] }}</p>", encoding="utf-8")
    result = news("campaign", "create", "--list", "news", "--subject", "Hello", "--template", str(page), ok=False)
    assert result.exit_code == 1
    assert "fails for subscriber noname@example.com" in result.stderr


def test_test_send_to_an_address_that_opted_out_sends_nothing(
    news: Cli, database: Database, tmp_path: Path, smtp_server: FaultyServer
) -> None:
    news("campaign", "create", "--list", "news", "--subject", "Welcome to Harmony News", "--template", "welcome")
    news("suppress", "add", "Ana@Example.com")
    config = load_config(news.config_path, environ={})
    with database.session() as session:
        bo = session.scalar(sa.select(Subscriber.id).where(Subscriber.email == "bo@example.com"))
        assert bo is not None
        list_only = replace(config, unsubscribe=replace(config.unsubscribe, scope=UnsubscribeScope.LIST))
        unsubscribe(session, list_only, UnsubscribeClaim(bo, 1, 1), "web")
    sender = smtp_cli(tmp_path, news, smtp_server)
    for address in ("ana@example.com", "bo@example.com"):
        result = sender("campaign", "test", "1", "--to", address, ok=False)
        assert result.exit_code == 1
        assert "opted out" in result.stderr and result.stderr.count("\n") == 1
    assert smtp_server.messages == []
    sender("campaign", "test", "1", "--to", "me@harmonymails.com")
    assert [m.rcpt_tos for m in smtp_server.messages] == [["me@harmonymails.com"]]
    # a legal notice reaches those who opted out of marketing, and so does its test
    notice = tmp_path / "terms.html.j2"
    notice.write_text("<p>Dear {{ subscriber.name }}, our terms change on 1 January.</p>", encoding="utf-8")
    news("notice", "create", "--subject", "Our terms change on 1 January", "--template", str(notice),
         "--reason", "we must tell you when our terms change")
    sender("campaign", "test", "2", "--to", "ana@example.com")
    assert smtp_server.messages[-1].rcpt_tos == ["ana@example.com"]


def test_a_subscriber_no_header_can_address_does_not_block_the_campaign(
    cli: Cli, tmp_path: Path, database: Database
) -> None:
    # a non-ASCII mailbox name needs SMTPUTF8: add and import refuse one, but a database filled
    # by other means may hold one; that one delivery fails at send time, the campaign goes
    from mailer.models import Subscription, SubscriptionStatus
    from mailer.recipients.lists import get_list

    cli("list", "create", "intl")
    with database.session() as session:
        person = Subscriber(email="josé@example.com", email_normalized="josé@example.com", name="José")
        session.add(person)
        session.flush()
        session.add(Subscription(subscriber_id=person.id, list_id=get_list(session, "intl").id,
                                 status=SubscriptionStatus.ACTIVE, consent_source="cli"))
    cli("subscriber", "add", "ana@example.com", "--list", "intl", "--name", "Ana", "--attr", "tier=gold")
    assert cli("campaign", "create", "--list", "intl", "--subject", "Autumn news", "--template", "welcome").output == "1\n"
    assert cli("campaign", "check", "1").output == "campaign 1 passes the compliance gate\n"
    # the template is still checked with that person's data
    html = tmp_path / "tier.html.j2"
    html.write_text("<p>Hello {{ subscriber.name }}, your tier: {{ subscriber.attributes.tier }}</p>", encoding="utf-8")
    refused = cli("campaign", "create", "--list", "intl", "--subject", "Tiers", "--template", str(html), ok=False)
    assert "the template fails for subscriber josé@example.com" in refused.stderr


def test_a_text_template_that_does_not_parse_is_named_by_its_own_file(news: Cli, tmp_path: Path) -> None:
    (tmp_path / "promo.html.j2").write_text("<p>Hello {{ subscriber.name }}</p>", encoding="utf-8")
    (tmp_path / "promo.txt.j2").write_text("Hello\n{% if %}\n", encoding="utf-8")
    result = news("campaign", "create", "--list", "news", "--subject", "Promo", "--template",
                  str(tmp_path / "promo.html.j2"), ok=False)
    assert result.stderr == "Error: text template promo.txt.j2 does not parse: line 2: " \
        "Expected an expression, got 'end of statement block'\n"
