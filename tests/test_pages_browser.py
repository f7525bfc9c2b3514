"""Real headless Chromium on the subscribers' pages: sign up by keyboard alone, follow the emailed
link, read the archive; no script, nothing from elsewhere, usable at phone and desktop widths."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cli_helpers import Cli
from flask import Flask
from sending_helpers import sending_config
from serve_helpers import free_port
from signup_helpers import confirm_path, signup_app, wait_for_confirmations
from smtp_faults import FaultyServer
from werkzeug.serving import make_server

from mailer.db import Database
from mailer.models import Subscriber, Subscription, SubscriptionStatus

# set to a directory to keep a screenshot of every page at each width (for a person to look at)
SCREENSHOTS = os.environ.get("MAILER_SCREENSHOTS", "")
WIDTHS = (375, 1280)
# axe-core's axe.min.js (npm axe-core), when given: every page is checked against WCAG 2 A and AA
AXE_JS = os.environ.get("MAILER_AXE_JS", "")


@pytest.fixture
def cli(tmp_path: Path, database: Database, smtp_server: FaultyServer) -> Cli:
    path = sending_config(tmp_path / "mailer.toml", database.url, smtp_server)
    cli = Cli(path)
    cli("list", "create", "news", "--title", "Harmony News")
    return cli


@pytest.fixture
def base_url(cli: Cli) -> Iterator[str]:
    """The app served over real HTTP on loopback from a thread."""
    app: Flask = signup_app(cli.config_path)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()
        wait_for_confirmations()
        app.extensions["mailer"].database.dispose()


def _wait_for_heading(browser: Any, text: str) -> None:
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 15, ignored_exceptions=(WebDriverException,)).until(
        expected_conditions.text_to_be_present_in_element((By.TAG_NAME, "h1"), text)
    )


def _wait_for_element(browser: Any, element_id: str) -> None:
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 15, ignored_exceptions=(WebDriverException,)).until(
        expected_conditions.presence_of_element_located((By.ID, element_id))
    )


def _check_widths(browser: Any, name: str) -> None:
    """Nothing sticks out sideways at phone or desktop width; screenshots when asked for."""
    for width in WIDTHS:
        browser.set_window_size(width, 900)
        overflow = browser.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{name} scrolls sideways at {width}px"
        if SCREENSHOTS:
            browser.save_screenshot(str(Path(SCREENSHOTS) / f"{name}-{width}.png"))
        if AXE_JS:
            for scheme in ("light", "dark"):
                browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {
                    "features": [{"name": "prefers-color-scheme", "value": scheme}]})
                assert _axe_violations(browser) == [], f"{name} at {width}px, {scheme}"
            browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})
    browser.set_window_size(1024, 900)


def _axe_violations(browser: Any) -> list[str]:
    # injected through the driver, which the page's CSP does not govern; the page itself runs no script
    browser.execute_script(Path(AXE_JS).read_text(encoding="utf-8"))
    result = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {runOnly: ['wcag2a', 'wcag2aa', 'wcag21aa', 'best-practice']})"
        ".then(r => done(r.violations.map(v => v.id + ': ' + v.nodes.map(n => n.target).join(' '))));"
    )
    return list(result)


def _page_loads_nothing_from_elsewhere(browser: Any, base_url: str) -> None:
    resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert all(url.startswith(base_url) for url in resources), resources
    assert browser.execute_script("return document.scripts.length") == 0


def test_signing_up_by_keyboard_and_confirming_from_the_emailed_link(
    browser: Any, base_url: str, database: Database, smtp_server: FaultyServer
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(f"{base_url}/subscribe/news")
    assert browser.title.startswith("Subscribe to Harmony News")
    _page_loads_nothing_from_elsewhere(browser, base_url)
    _check_widths(browser, "subscribe")
    # the stylesheet loaded under the strict CSP: the honeypot is out of sight
    assert browser.find_element(By.ID, "signup-website").location["x"] < 0

    # Tab goes skip link, email, name, the box, the button: never into the honeypot
    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.TAB)
    order = []
    for _ in range(5):
        order.append(browser.switch_to.active_element.get_attribute("id") or
                     browser.switch_to.active_element.get_attribute("class"))
        browser.switch_to.active_element.send_keys(Keys.TAB)
    assert order == ["skip-link", "signup-email", "signup-name", "signup-consent", "signup-button"]
    browser.find_element(By.ID, "signup-email").send_keys("ana@example.com")
    browser.find_element(By.ID, "signup-name").send_keys("Ana Lima")
    browser.find_element(By.ID, "signup-consent").send_keys(Keys.SPACE)
    browser.find_element(By.ID, "signup-consent").send_keys(Keys.ENTER)

    _wait_for_heading(browser, "Check your inbox")
    _check_widths(browser, "subscribe-sent")
    wait_for_confirmations()
    [received] = smtp_server.messages
    assert received.rcpt_tos == ["ana@example.com"]
    browser.get(base_url + confirm_path(smtp_server))
    _check_widths(browser, "confirm")
    browser.find_element(By.ID, "confirm-button").click()
    _wait_for_heading(browser, "You are subscribed")
    _check_widths(browser, "confirm-done")

    with database.session() as session:
        subscription = session.scalar(sa.select(Subscription).join(Subscriber)
                                      .where(Subscriber.email == "ana@example.com"))
        assert subscription is not None
        assert subscription.status is SubscriptionStatus.ACTIVE
        # the hosted page told us where the form was, and the words it showed
        assert subscription.consent_page == f"{base_url}/subscribe/news"
        assert subscription.consent_text and "Harmony News" in subscription.consent_text
        assert subscription.consent_user_agent and "Chrome" in subscription.consent_user_agent
    assert browser.get_cookies() == []


def test_an_empty_box_is_refused_by_the_browser_and_a_bad_address_by_us(
    browser: Any, base_url: str, database: Database
) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{base_url}/subscribe/news")
    browser.find_element(By.ID, "signup-email").send_keys("ana@example.com")
    browser.find_element(By.ID, "signup-button").click()
    # the box is required: the browser keeps the person on the form and says so
    assert browser.execute_script("return document.getElementById('signup-consent').validity.valueMissing")
    assert browser.title.startswith("Subscribe")

    browser.execute_script("document.querySelector('form').noValidate = true")
    email = browser.find_element(By.ID, "signup-email")
    email.clear()
    email.send_keys("ana@@example")
    browser.find_element(By.ID, "signup-consent").click()
    browser.find_element(By.ID, "signup-button").click()
    # the answer has the form's own heading: wait for its error, not for the heading
    _wait_for_element(browser, "signup-error")
    assert browser.find_element(By.TAG_NAME, "h1").text.startswith("Subscribe to Harmony News")
    assert "ana@@example" in browser.find_element(By.ID, "signup-error").text
    _check_widths(browser, "subscribe-error")
    with database.session() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Subscriber)) == 0


def test_reading_the_archive(browser: Any, base_url: str, cli: Cli, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    cli("subscriber", "add", "ana@example.com", "--list", "news", "--name", "Ana Lima")
    campaign_id = cli("campaign", "create", "--list", "news", "--subject", "Welcome to Harmony News",
                      "--template", "welcome", "--archive").stdout.strip().splitlines()[-1]
    cli("campaign", "send", campaign_id)

    browser.get(f"{base_url}/archive")
    _check_widths(browser, "archive")
    browser.find_element(By.LINK_TEXT, "Welcome to Harmony News").click()
    _wait_for_heading(browser, "Welcome to Harmony News")
    _check_widths(browser, "archive-item")
    _page_loads_nothing_from_elsewhere(browser, base_url)

    main = browser.find_element(By.TAG_NAME, "main").text
    assert "Welcome aboard, there!" in main and "Ana" not in main
    # the campaign's own inline styles apply under the archive's CSP
    heading = browser.find_element(By.CSS_SELECTOR, "#hm-content h1")
    assert heading.value_of_css_property("font-size") == "28px"
    assert "1968 S Coast HWY #2045" in browser.find_element(By.TAG_NAME, "footer").text


@pytest.fixture
def two_sites(tmp_path: Path, database: Database, smtp_server: FaultyServer) -> Iterator[tuple[str, str, Path]]:
    """Our app, and the company's own site on another origin serving files from a directory."""
    import functools
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    ours, theirs = free_port(), free_port()
    site = tmp_path / "site"
    site.mkdir()
    path = sending_config(tmp_path / "mailer.toml", database.url, smtp_server,
                          extra=f'[web]\nallowed_origins = ["http://127.0.0.1:{theirs}"]\n')
    # the links and the pasted form point at our app on its loopback port
    path.write_text(path.read_text().replace("[unsubscribe]\n", f'[unsubscribe]\nbase_url = "http://127.0.0.1:{ours}"\n'))
    Cli(path)("list", "create", "news", "--title", "Harmony News")
    app = signup_app(path)
    servers = [make_server("127.0.0.1", ours, app, threaded=True),
               ThreadingHTTPServer(("127.0.0.1", theirs), functools.partial(SimpleHTTPRequestHandler, directory=site))]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for thread in threads:
        thread.start()
    try:
        yield f"http://127.0.0.1:{ours}", f"http://127.0.0.1:{theirs}", path
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
        wait_for_confirmations()
        app.extensions["mailer"].database.dispose()


def _subscription(database: Database, address: str) -> Subscription | None:
    with database.session() as session:
        return session.scalar(sa.select(Subscription).join(Subscriber).where(Subscriber.email == address))


def test_the_form_pasted_into_the_company_site_and_its_script_both_sign_up(
    browser: Any, two_sites: tuple[str, str, Path], database: Database, smtp_server: FaultyServer
) -> None:
    from selenium.webdriver.common.by import By

    ours, theirs, config_path = two_sites
    site = config_path.parent / "site"
    snippet = Cli(config_path)("list", "form", "news").stdout
    (site / "join.html").write_text(f"<!doctype html><title>Join</title><h1>Join us</h1>{snippet}", encoding="utf-8")
    (site / "api.html").write_text(
        "<!doctype html><title>API</title><script>"
        f"fetch('{ours}/subscribe/news', {{method: 'POST', headers: {{'Content-Type': 'application/json'}},"
        " body: JSON.stringify({email: 'bo@example.com', consent: true})})"
        ".then(r => r.json()).then(j => document.title = 'got ' + j.status)"
        ".catch(e => document.title = 'failed ' + e);</script>", encoding="utf-8")

    browser.get(f"{theirs}/join.html")
    browser.find_element(By.ID, "signup-email").send_keys("ana@example.com")
    browser.find_element(By.ID, "signup-consent").click()
    browser.find_element(By.ID, "signup-button").click()
    _wait_for_heading(browser, "Check your inbox")
    assert browser.current_url == f"{ours}/subscribe/news"

    browser.get(f"{theirs}/api.html")
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 15).until(lambda b: b.title != "API")
    assert browser.title == "got check your inbox"
    wait_for_confirmations()

    ana, bo = _subscription(database, "ana@example.com"), _subscription(database, "bo@example.com")
    # across sites a browser tells only the site (strict-origin-when-cross-origin), not the page
    assert ana is not None and ana.consent_page == f"{theirs}/"
    assert bo is not None and bo.consent_page == f"{theirs}/"
    assert sorted(m.rcpt_tos[0] for m in smtp_server.messages) == ["ana@example.com", "bo@example.com"]
