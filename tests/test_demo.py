"""`mailer demo`: the whole flow, real SMTP to a capture server, a Maildir and an unsubscribe link."""

from __future__ import annotations

import email.parser
import email.policy
import mailbox
import re
from pathlib import Path

from click.testing import CliRunner

from mailer.cli import main
from mailer.config import load_config
from mailer.db import Database
from mailer.models import Subscriber
from mailer.tokens import read_unsubscribe_token


def run_demo(directory: Path) -> str:
    result = CliRunner().invoke(main, ["demo", "--dir", str(directory)], catch_exceptions=False)
    assert result.exit_code == 0, result.output + result.stderr
    return result.output


def test_demo_sends_the_sample_campaign_into_a_maildir(tmp_path: Path) -> None:
    directory = tmp_path / "demo"
    output = run_demo(directory)

    box = mailbox.Maildir(directory / "maildir", create=False)
    parser = email.parser.BytesParser(policy=email.policy.default)
    messages = [parser.parsebytes(box.get_bytes(key)) for key in box.iterkeys()]
    recipients = sorted(str(m["To"].addresses[0].addr_spec) for m in messages)
    assert len(messages) == 7
    assert "hana.sato@example.com" not in recipients  # opted out before the send
    assert len(set(recipients)) == 7
    for message in messages:
        assert message["Subject"] == "Welcome to Harmony News"
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert message.get_content_type() == "multipart/alternative"
    assert "7 messages" in output
    shown = re.search(r"^\s*maildir\s+(\S+)", output, re.MULTILINE)
    assert shown is not None, output
    assert Path(shown.group(1)).resolve() == (directory / "maildir").resolve()

    url = re.search(r"unsubscribe\s+(https://\S+/u/(\S+))", output)
    assert url is not None, output
    config = load_config(directory / "mailer.toml", environ={})
    claim = read_unsubscribe_token(config.require_secret_keys(), url.group(2))
    named = re.search(r"the one-click link for .*<(\S+@\S+)>", output)
    assert named is not None, output
    database = Database(config.database.url)
    try:
        with database.session() as session:
            subscriber = session.get(Subscriber, claim.subscriber_id)
            assert subscriber is not None and subscriber.email == named.group(1)
    finally:
        database.dispose()
    assert named.group(1) in recipients
    assert any(url.group(1) in str(m["List-Unsubscribe"]) for m in messages)

    status = CliRunner().invoke(main, ["--config", str(directory / "mailer.toml"), "campaign", "status", "1"])
    assert "status: sent (7 sent)" in status.output


def test_demo_replaces_its_own_directory_and_refuses_any_other(tmp_path: Path) -> None:
    directory = tmp_path / "demo"
    run_demo(directory)
    run_demo(directory)  # a second run starts afresh
    assert len(mailbox.Maildir(directory / "maildir", create=False)) == 7

    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me", encoding="utf-8")
    result = CliRunner().invoke(main, ["demo", "--dir", str(precious)])
    assert result.exit_code == 1
    assert "was not made by `mailer demo`" in result.stderr
    assert (precious / "notes.txt").read_text(encoding="utf-8") == "keep me"
