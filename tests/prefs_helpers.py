"""Shared setup for the preference-centre tests: the app with a real relay, links read from captured mail."""

from __future__ import annotations

import email
import email.policy
import re
import time
from email.message import EmailMessage
from pathlib import Path

from cli_helpers import write_config
from flask import Flask
from smtp_faults import FaultyServer

from mailer.config import Config, load_config
from mailer.db import Database
from mailer.tokens import make_preferences_token
from mailer.web.app import create_app

BROWSER_UA = "Mozilla/5.0 (X11; Linux x86_64) TestBrowser/1.0"


def prefs_config(tmp_path: Path, database: Database, smtp: FaultyServer) -> Config:
    return load_config(write_config(tmp_path / "prefs.toml", database.url, smtp), environ={})


def prefs_app(config: Config, rate_limits: bool = False) -> Flask:
    return create_app(config, {"TESTING": True, "RATELIMIT_ENABLED": rate_limits})


def prefs_path(config: Config, subscriber_id: int) -> str:
    return "/p/" + make_preferences_token(config.require_secret_keys(), subscriber_id)


def wait_for_messages(server: FaultyServer, count: int, timeout: float = 15.0) -> list[EmailMessage]:
    """The first `count` messages the relay took, once they are there (some are sent from a thread)."""
    deadline = time.monotonic() + timeout
    while len(server.messages) < count:
        assert time.monotonic() < deadline, f"{len(server.messages)} messages arrived, not {count}"
        time.sleep(0.05)
    return [parsed(received.data) for received in server.messages[:count]]


def parsed(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def text_of(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


def html_of(message: EmailMessage) -> str:
    part = message.get_body(("html",))
    assert part is not None
    return str(part.get_content())


def link_in(message: EmailMessage, kind: str) -> str:
    """The path of the first `/kind/<token>` link in the text part."""
    found = re.search(rf"https?://\S+?(/{kind}/[A-Za-z0-9_.\-]+)", text_of(message))
    assert found is not None, text_of(message)
    return found.group(1)
