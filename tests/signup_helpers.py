"""Shared setup for the sign-up and archive page tests: the app on a config with the SMTP server."""

from __future__ import annotations

import email
import email.policy
import re
import threading
from pathlib import Path

from cli_helpers import write_config
from flask import Flask
from smtp_faults import FaultyServer

from mailer.config import load_config
from mailer.web.app import create_app
from mailer.web.subscribe import SIGNUP_THREAD


def signup_config(tmp_path: Path, db_url: str, smtp: FaultyServer | None, extra: str = "") -> Path:
    return write_config(tmp_path / "mailer.toml", db_url, smtp, extra=extra)


def signup_app(config_path: Path, **test_config: object) -> Flask:
    return create_app(load_config(config_path, environ={}), {"TESTING": True, **test_config})


def wait_for_confirmations() -> None:
    """Sign-ups are recorded and confirmations mailed beside the answer; wait until every one is done."""
    for thread in threading.enumerate():
        if thread.name == SIGNUP_THREAD:
            thread.join(timeout=30)


def confirm_path(smtp_server: FaultyServer, index: int = -1) -> str:
    """The /confirm/ path of a captured confirmation message."""
    message = email.message_from_bytes(smtp_server.messages[index].data, policy=email.policy.default)
    text = message.get_body(("plain",))
    assert text is not None
    found = re.search(r"https?://\S+?(/confirm/\S+)", text.get_content())
    assert found is not None, text.get_content()
    return found.group(1)
