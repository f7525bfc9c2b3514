"""`mailer list create` and `mailer list ls`: the counts a marketer reads before sending."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from mailer.cli import main
from mailer.config import load_config
from mailer.db import Database
from mailer.recipients.optout import OptOutSource, unsubscribe
from mailer.recipients.subscribers import find_subscriber
from mailer.tokens import UnsubscribeClaim


def _mailer(config_path: Path, *args: str, ok: bool = True) -> Any:
    result = CliRunner().invoke(main, ["--config", str(config_path), *args])
    assert (result.exit_code == 0) is ok, result.output
    return result


def _counts(config_path: Path) -> dict[str, dict[str, Any]]:
    rows = json.loads(_mailer(config_path, "list", "ls", "--json").stdout)
    return {row.pop("name"): row for row in rows}


def _leave_one_list(config_path: Path, database: Database, email: str, list_name: str) -> None:
    # what the unsubscribe link does with unsubscribe.scope = "list"
    text = config_path.read_text(encoding="utf-8")
    config_path.write_text(text.replace("[unsubscribe]\n", '[unsubscribe]\nscope = "list"\n', 1), encoding="utf-8")
    config = load_config(config_path, environ={})
    with database.session() as session:
        subscriber = find_subscriber(session, email)
        assert subscriber is not None
        [list_id] = [s.list_id for s in subscriber.subscriptions if s.mailing_list.name == list_name]
        assert unsubscribe(session, config, UnsubscribeClaim(subscriber.id, list_id, None), OptOutSource.PAGE).changed


def test_list_ls_counts_each_subscription_under_one_state(
    config_path: Path, database: Database, smtp_server: Any
) -> None:
    # the double opt-in list sends its confirmation message here
    with config_path.open("a", encoding="utf-8") as config_file:
        config_file.write(f'\n[smtp]\nhost = "{smtp_server.host}"\nport = {smtp_server.port}\nstarttls = "off"\n')
    assert _mailer(config_path, "list", "ls").stdout == "no lists yet; create one with `mailer list create NAME`\n"
    assert _mailer(config_path, "list", "create", "news", "--title", "Harmony News").stdout == "created list news\n"
    _mailer(config_path, "list", "create", "club", "--double-opt-in")
    for email in ("ana@example.com", "ben@example.com", "cy@example.com", "dee@example.com"):
        _mailer(config_path, "subscriber", "add", email, "--list", "news")
    _mailer(config_path, "subscriber", "add", "ana@example.com", "--list", "club")
    assert [m.rcpt_tos for m in smtp_server.messages] == [["ana@example.com"]]
    _mailer(config_path, "suppress", "add", "ben@example.com", "--reason", "asked by phone")
    _leave_one_list(config_path, database, "cy@example.com", "news")

    assert _counts(config_path) == {
        # a new member of a double opt-in list waits, unconfirmed, for the link
        "club": {"title": "club", "double_opt_in": True, "active": 0, "unconfirmed": 1,
                 "unsubscribed": 0, "suppressed": 0},
        # ben is still subscribed but suppressed: a campaign would not reach him
        "news": {"title": "Harmony News", "double_opt_in": False, "active": 2, "unconfirmed": 0,
                 "unsubscribed": 1, "suppressed": 1},
    }
    assert _mailer(config_path, "list", "ls").stdout.splitlines() == [
        "NAME  ACTIVE  UNCONFIRMED  UNSUBSCRIBED  SUPPRESSED  TITLE",
        "club       0            1             0           0  club (double opt-in)",
        "news       2            0             1           1  Harmony News",
    ]


def test_a_list_name_is_taken_once_and_must_be_plain(config_path: Path) -> None:
    _mailer(config_path, "list", "create", "news")
    again = _mailer(config_path, "list", "create", "news", ok=False)
    assert again.output.strip().splitlines()[-1] == "Error: a list named 'news' already exists"
    bad = _mailer(config_path, "list", "create", "no spaces", ok=False)
    assert bad.output.strip().splitlines()[-1] == (
        "Error: invalid list name 'no spaces': use up to 100 letters, digits, '.', '_' or '-'")
    assert list(_counts(config_path)) == ["news"]
