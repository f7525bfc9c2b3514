"""Lists, subscribers and suppressions through the command line, as a marketer uses them."""

from __future__ import annotations

import json
from pathlib import Path

from cli_helpers import Cli


def members(cli: Cli, list_name: str = "news") -> list[dict[str, object]]:
    result = cli("subscriber", "ls", "--list", list_name, "--json")
    data: list[dict[str, object]] = json.loads(result.output)
    return data


def test_create_and_list_lists(cli: Cli) -> None:
    assert cli("list", "create", "news", "--title", "Harmony News").output == "created list news\n"
    cli("list", "create", "vip", "--double-opt-in")
    output = cli("list", "ls").output
    assert "news" in output and "Harmony News" in output
    assert "vip" in output and "double opt-in" in output
    data = json.loads(cli("list", "ls", "--json").output)
    assert [d["name"] for d in data] == ["news", "vip"]


def test_duplicate_list_name_is_one_clear_line(cli: Cli) -> None:
    cli("list", "create", "news")
    result = cli("list", "create", "news", ok=False)
    assert result.exit_code == 1
    assert result.stderr == "Error: a list named 'news' already exists\n"


def test_add_subscriber_with_name_and_attributes(cli: Cli) -> None:
    cli("list", "create", "news")
    result = cli("subscriber", "add", "Ana@Example.com", "--list", "news", "--name", "Ana Lima",
                 "--attr", "city=Lisbon")
    assert result.output == "added Ana@example.com to news\n"
    shown = json.loads(cli("subscriber", "show", "ana@EXAMPLE.com", "--json").output)
    assert shown["name"] == "Ana Lima"
    assert shown["attributes"] == {"city": "Lisbon"}
    assert shown["subscriptions"][0]["consent"]["source"] == "cli"
    # the same person in another case is not a second subscriber
    again = cli("subscriber", "add", "ANA@example.com", "--list", "news")
    assert "already subscribed" in again.output
    assert len(members(cli)) == 1


def test_bad_input_on_add_is_one_line_and_changes_nothing(cli: Cli) -> None:
    cli("list", "create", "news")
    cli("subscriber", "add", "ana@example.com", "--list", "news", "--name", "Ana")
    cases = [
        (["subscriber", "add", "not-an-address", "--list", "news"], "invalid email address"),
        (["subscriber", "add", "bob@example.com", "--list", "nope"], "no list named 'nope'"),
        (["subscriber", "add", "ana@example.com", "--list", "news", "--name", "Ana\r\nBcc: x@evil.test"],
         "line breaks"),
        (["subscriber", "add", "ana@example.com", "--list", "news", "--attr", "nokey"], "KEY=VALUE"),
    ]
    for args, expected in cases:
        result = cli(*args, ok=False)
        assert result.exit_code == 1, args
        assert expected in result.stderr
        assert result.stderr.count("\n") == 1, result.stderr
    assert [(m["email"], m["name"]) for m in members(cli)] == [("ana@example.com", "Ana")]


def test_suppressed_address_is_never_subscribed_again(cli: Cli) -> None:
    cli("list", "create", "news")
    cli("suppress", "add", "gone@example.com", "--reason", "asked by phone")
    result = cli("subscriber", "add", "Gone@Example.com", "--list", "news", ok=False)
    assert result.exit_code == 1
    assert "suppression list" in result.stderr
    assert members(cli) == []
    listed = json.loads(cli("suppress", "ls", "--json").output)
    assert [(s["email"], s["reason"]) for s in listed] == [("gone@example.com", "manual")]
    assert "already suppressed" in cli("suppress", "add", "gone@example.com").output


def test_commands_refuse_an_uninitialized_database(tmp_path: Path) -> None:
    from cli_helpers import write_config

    config = write_config(tmp_path / "other.toml", f"sqlite:///{tmp_path / 'fresh.db'}")
    result = Cli(config)("list", "ls", ok=False)
    assert result.exit_code == 1
    assert "run `mailer init`" in result.stderr


def test_init_creates_config_with_a_fresh_key_and_the_database(tmp_path: Path) -> None:
    import os

    from click.testing import CliRunner

    from mailer.cli import main

    runner = CliRunner()
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        first = runner.invoke(main, ["init"], env={"MAILER_CONFIG": None})
        assert first.exit_code == 0, first.output
        assert "wrote mailer.toml" in first.output
        text = (tmp_path / "mailer.toml").read_text()
        assert "secret_keys = [" in text
        assert (tmp_path / "mailer.toml").stat().st_mode & 0o077 == 0
        second = runner.invoke(main, ["init"], env={"MAILER_CONFIG": None})
        assert "kept existing mailer.toml" in second.output
        assert (tmp_path / "mailer.toml").read_text() == text
        assert runner.invoke(main, ["list", "create", "news"], env={"MAILER_CONFIG": None}).exit_code == 0
    finally:
        os.chdir(cwd)


def test_list_counts_a_suppressed_subscriber_as_suppressed_not_active(cli: Cli) -> None:
    cli("list", "create", "news")
    for address in ("ana@example.com", "bob@example.com", "cy@example.com"):
        cli("subscriber", "add", address, "--list", "news")
    cli("suppress", "add", "Bob@Example.com")
    (news,) = json.loads(cli("list", "ls", "--json").output)
    assert (news["active"], news["suppressed"]) == (2, 1)
    assert "SUPPRESSED" in cli("list", "ls").output
