"""A real headless Chromium follows a delivered campaign's footer to the preference centre, asks for
the identity link, follows it from the captured mail, downloads the JSON, changes the name, erases."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import Cli
from prefs_helpers import link_in, prefs_app, prefs_config, wait_for_messages
from serve_helpers import free_port
from smtp_faults import FaultyServer
from werkzeug.serving import make_server

from mailer.config import Config
from mailer.db import Database
from mailer.recipients.subscribers import find_subscriber

# where the screenshots go for a person to look at; never committed
SHOTS = Path(os.environ.get("MAILER_SCREENSHOTS", "/tmp/mailer-prefs-screenshots"))


@pytest.fixture
def served(tmp_path: Path, database: Database, smtp_server: FaultyServer) -> Iterator[tuple[Config, str]]:
    """The app over real HTTP on loopback, and its address there: the mailed links name the public
    https site, and the browser goes to the same path here, as a reverse proxy would send it."""
    port = free_port()
    config = prefs_config(tmp_path, database, smtp_server)
    app = prefs_app(config)
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield config, f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()
        app.extensions["mailer"].database.dispose()


def _wait_for_heading(browser: Any, text: str) -> None:
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    # while a POST's answer replaces the page, chromedriver may fail a query about the old one
    WebDriverWait(browser, 15, ignored_exceptions=(WebDriverException,)).until(
        expected_conditions.text_to_be_present_in_element((By.TAG_NAME, "h1"), text))


def _shoot(browser: Any, name: str) -> None:
    """The page at phone and desktop width; at neither may it scroll sideways."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    for width in (375, 1280):
        browser.set_window_size(width, 1400)
        assert browser.execute_script("return document.documentElement.scrollWidth") <= width, (name, width)
        browser.save_screenshot(str(SHOTS / f"{name}-{width}.png"))
    browser.set_window_size(1024, 900)


def _send_campaign(cli: Cli, tmp_path: Path) -> None:
    cli("list", "create", "news", "--title", "Harmony News")
    cli("list", "create", "offers", "--title", "Harmony Offers")
    for name in ("news", "offers"):
        cli("subscriber", "add", "ana@example.com", "--list", name, "--name", "Ana Lima", "--attr", "city=Porto")
    template = tmp_path / "hello.html.j2"
    template.write_text("<p>Hello {{ subscriber.name }}, our winter range is here.</p>", encoding="utf-8")
    campaign = cli("campaign", "create", "--list", "news", "--subject", "Our winter range",
                   "--template", str(template)).stdout.strip()
    cli("campaign", "send", campaign)


def test_from_the_footer_to_the_data_page_and_erasure_in_chromium(
    browser: Any, served: tuple[Config, str], database: Database, smtp_server: FaultyServer, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    config, site = served
    browser.get(site + "/preferences")
    assert browser.find_element(By.CSS_SELECTOR, "label[for=email]").text == "Email address"
    _shoot(browser, "preferences-ask")
    _send_campaign(Cli(Path(config.source)), tmp_path)
    [campaign] = wait_for_messages(smtp_server, 1)
    browser.get(site + link_in(campaign, "p"))
    assert browser.find_element(By.TAG_NAME, "h1").text == "Your email preferences"
    assert "a•••@example.com" in browser.find_element(By.TAG_NAME, "main").text
    assert browser.find_element(By.ID, "list-1").is_selected()
    # keyboard: past the skip link, Tab reaches the first list's checkbox
    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.TAB)
    browser.switch_to.active_element.send_keys(Keys.TAB)
    assert browser.switch_to.active_element.get_attribute("id") == "list-1"
    _shoot(browser, "preferences")

    browser.find_element(By.ID, "link-button").click()
    _wait_for_heading(browser, "Check your email")
    _shoot(browser, "preferences-link-sent")
    identity = wait_for_messages(smtp_server, 2)[1]
    browser.get(site + link_in(identity, "me"))
    _shoot(browser, "me-open")
    browser.find_element(By.ID, "open-button").click()
    _wait_for_heading(browser, "Your personal data")
    assert "ana@example.com" in browser.find_element(By.TAG_NAME, "main").text
    _shoot(browser, "me")

    _download(browser, tmp_path / "downloads")

    name = browser.find_element(By.ID, "name")
    name.clear()
    name.send_keys("Ana L. Souza")
    browser.find_element(By.ID, "correct-button").click()
    _wait_for_heading(browser, "Your personal data")
    assert browser.find_element(By.ID, "note").text == "Saved."
    with database.session() as session:
        ana = find_subscriber(session, "ana@example.com")
        assert ana is not None and ana.name == "Ana L. Souza"

    browser.find_element(By.ID, "erase-button").click()
    _wait_for_heading(browser, "Erase everything?")
    _shoot(browser, "me-erase")
    browser.find_element(By.ID, "erase-confirm-button").click()
    _wait_for_heading(browser, "Everything is erased")
    _shoot(browser, "me-erased")
    with database.session() as session:
        assert find_subscriber(session, "ana@example.com") is None
    assert browser.get_cookies() == []


def _download(browser: Any, folder: Path) -> None:
    from selenium.webdriver.common.by import By

    folder.mkdir()
    browser.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(folder)})
    browser.find_element(By.ID, "download-button").click()
    target = folder / "my-data.json"
    deadline = time.monotonic() + 15
    while not target.exists():
        assert time.monotonic() < deadline, list(folder.iterdir())
        time.sleep(0.1)
    data = json.loads(target.read_text(encoding="utf-8"))
    assert data["email"] == "ana@example.com" and data["profile"]["attributes"] == {"city": "Porto"}
    assert [sub["list"] for sub in data["subscriptions"]] == ["news", "offers"]
    assert [d["subject"] for d in data["deliveries"]] == ["Our winter range"]
