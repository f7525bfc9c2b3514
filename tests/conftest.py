"""Shared fixtures: a fresh database per test (SQLite, and PostgreSQL when configured),
a config file pointing at it, the CLI, a recording SMTP server on loopback, and headless Chromium."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cli_helpers import Cli, write_config
from hypothesis import HealthCheck, settings
from inbound_helpers import World
from smtp_faults import FaultyServer, faulty_smtp_server

from mailer.config import Config, load_config
from mailer.db import Database

# property tests run on a shared two-core machine: judge them by what they find, not by the clock
settings.register_profile(
    "mailer", deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
settings.load_profile("mailer")

POSTGRES_URL = os.environ.get("MAILER_TEST_POSTGRES_URL", "")


def _postgres_schema_url(schema: str) -> str:
    # every test gets a schema of its own; search_path makes it the default for all queries
    joiner = "&" if "?" in POSTGRES_URL else "?"
    return f"{POSTGRES_URL}{joiner}options=-csearch_path%3D{schema}"


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mailer.db'}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    if not POSTGRES_URL:
        pytest.skip("PostgreSQL tests need MAILER_TEST_POSTGRES_URL (set by .ci/run)")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    try:
        yield _postgres_schema_url(schema)
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest) -> str:
    """Runs the test once on SQLite and once on PostgreSQL (skipped when not configured)."""
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture
def database(db_url: str) -> Iterator[Database]:
    db = Database(db_url)
    db.upgrade()
    yield db
    db.dispose()


@pytest.fixture
def smtp_server() -> Iterator[FaultyServer]:
    """A real SMTP server on loopback that records what it accepts; a test may set its `faults`."""
    with faulty_smtp_server() as server:
        yield server


CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


@pytest.fixture(scope="session")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One headless Chromium for the whole run: starting one takes seconds on a shared machine."""
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; "
                    ".ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    # Selenium Manager must never fetch a browser or driver: both are given explicitly
    saved = os.environ.get("SE_OFFLINE")
    os.environ["SE_OFFLINE"] = "1"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tmp_path_factory.mktemp("chromium-profile")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    service = Service(executable_path=str(CHROMEDRIVER), log_output=os.devnull)
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        if saved is None:
            os.environ.pop("SE_OFFLINE", None)
        else:
            os.environ["SE_OFFLINE"] = saved


@pytest.fixture
def browser(chromium: Any) -> Any:
    """The shared Chromium as a fresh one would be: a blank page in a desktop window, no cookies."""
    chromium.get("about:blank")
    chromium.set_window_size(1024, 900)
    chromium.execute_cdp_cmd("Network.clearBrowserCookies", {})
    return chromium


@pytest.fixture
def config_path(tmp_path: Path, database: Database) -> Path:
    return write_config(tmp_path / "mailer.toml", database.url)


@pytest.fixture
def config(config_path: Path) -> Config:
    return load_config(config_path, environ={})


@pytest.fixture
def cli(config_path: Path) -> Cli:
    return Cli(config_path)


@pytest.fixture
def world(database: Database, config: Config) -> World:
    """For inbound tests: Ana has received a campaign, Bob is on her list."""
    return World(database, config)
