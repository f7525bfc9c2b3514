"""Shared fixtures: a fresh database per test (SQLite, and PostgreSQL when configured),
a config file pointing at it, the CLI, and a recording SMTP server on loopback."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, settings

from mailer.cli import main
from mailer.config import Config, load_config
from mailer.db import Database

# property tests run on a shared two-core machine: judge them by what they find, not by the clock
settings.register_profile(
    "mailer", deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
settings.load_profile("mailer")

POSTGRES_URL = os.environ.get("MAILER_TEST_POSTGRES_URL", "")
TEST_SECRET_KEY = "test-signing-key-0123456789abcdef"


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


@dataclass
class ReceivedMessage:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes


@dataclass
class RecordingHandler:
    """An aiosmtpd handler that keeps every message it accepts."""

    messages: list[ReceivedMessage] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(
            ReceivedMessage(envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.original_content))
        )
        return "250 2.0.0 OK: queued"


@dataclass
class SmtpServer:
    host: str
    port: int
    handler: RecordingHandler

    @property
    def messages(self) -> list[ReceivedMessage]:
        return self.handler.messages


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    """A real SMTP server on loopback that records what it receives."""
    handler = RecordingHandler()
    # aiosmtpd's start() connects to the port it was given to check the server is up, so
    # port 0 cannot be used; a port the kernel just handed out is free in practice
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield SmtpServer("127.0.0.1", port, handler)
    finally:
        controller.stop()


def write_config(path: Path, db_url: str, smtp: SmtpServer | None = None, extra: str = "") -> Path:
    """A mailer.toml for tests: the given database, a signing key, the loopback SMTP server."""
    smtp_part = ""
    if smtp is not None:
        smtp_part = f'[smtp]\nhost = "{smtp.host}"\nport = {smtp.port}\nstarttls = "off"\ntimeout = 5\n'
    path.write_text(
        f'[database]\nurl = "{db_url}"\n\n'
        f'[unsubscribe]\nsecret_keys = ["{TEST_SECRET_KEY}"]\n\n'
        f"{smtp_part}{extra}",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def config_path(tmp_path: Path, database: Database) -> Path:
    return write_config(tmp_path / "mailer.toml", database.url)


@pytest.fixture
def config(config_path: Path) -> Config:
    return load_config(config_path, environ={})


class Cli:
    """Runs `mailer --config PATH ...` in-process with click's CliRunner."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.runner = CliRunner()

    def __call__(self, *args: str, input: str | None = None, ok: bool = True) -> Result:
        result = self.runner.invoke(
            main, ["--config", str(self.config_path), *args], input=input, catch_exceptions=False
        )
        if ok and result.exit_code != 0:
            raise AssertionError(
                f"mailer {' '.join(args)} exited {result.exit_code}:\n{result.output}{result.stderr}"
            )
        return result


@pytest.fixture
def cli(config_path: Path) -> Cli:
    return Cli(config_path)
