"""A real headless Chromium opens the unsubscribe link, clicks the button, and the opt-out sticks."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from recipient_helpers import Person, add_person, audit_events, make_lists, statuses, suppressions
from werkzeug.serving import make_server

from mailer.config import Config
from mailer.db import Database, address_hash
from mailer.models import SubscriptionStatus, SuppressionReason
from mailer.web.app import create_app


@pytest.fixture
def base_url(config: Config) -> Iterator[str]:
    """The app served over real HTTP on loopback from a thread."""
    app = create_app(config)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()
        app.extensions["mailer"].database.dispose()


@pytest.fixture
def ana(database: Database) -> Person:
    make_lists(database, "news", "offers")
    return add_person(database, "ana@example.com", "news", "offers")


def test_clicking_the_button_in_chromium_unsubscribes(
    browser: Any, base_url: str, database: Database, config: Config, ana: Person
) -> None:
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{base_url}/u/{ana.token(config, campaign_id=3)}")
    assert browser.title.startswith("Unsubscribe")
    assert "a•••@example.com" in browser.find_element(By.TAG_NAME, "main").text
    # the page was fetched and shown; a scanner doing the same must change nothing
    assert suppressions(database) == []
    # the stylesheet loaded under the strict CSP: the button is styled, not the browser default
    button = browser.find_element(By.ID, "unsubscribe-button")
    assert button.value_of_css_property("border-radius") == "8px"
    assert browser.execute_script("return document.styleSheets.length") == 1

    button.click()

    # the POST answers with a new page: wait for its heading; while the old page is being replaced
    # chromedriver may answer a query about it with a WebDriverException, so those are retried
    WebDriverWait(browser, 15, ignored_exceptions=(WebDriverException,)).until(
        expected_conditions.text_to_be_present_in_element((By.TAG_NAME, "h1"), "You are unsubscribed")
    )
    assert browser.current_url == f"{base_url}/u/{ana.token(config, campaign_id=3)}"
    [entry] = suppressions(database)
    assert entry.address_hash == address_hash("ana@example.com")
    assert entry.reason is SuppressionReason.UNSUBSCRIBED
    assert entry.source == "page" and entry.ip == "127.0.0.1"
    assert entry.user_agent and "Chrome" in entry.user_agent
    assert set(statuses(database, ana).values()) == {SubscriptionStatus.UNSUBSCRIBED}
    assert audit_events(database)[0].detail["campaign_id"] == 3
    # the browser kept nothing: no cookie was set
    assert browser.get_cookies() == []
