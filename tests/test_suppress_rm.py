"""`mailer suppress rm`: an operator undoes a wrong suppression, on the record."""

from __future__ import annotations

import json

from cli_helpers import Cli

from mailer.db import address_hash


def suppressed(cli: Cli) -> list[dict[str, str]]:
    return list(json.loads(cli("suppress", "ls", "--json").stdout))


def audit(cli: Cli, action: str) -> list[dict[str, str]]:
    return [e for e in json.loads(cli("audit", "ls", "--json").stdout) if e["action"] == action]


def test_a_wrong_suppression_is_lifted_with_its_reason_in_the_audit_trail(cli: Cli) -> None:
    cli("list", "create", "news")
    cli("suppress", "add", "ana@example.com", "--reason", "forged complaint")
    assert "ana@example.com" in cli("subscriber", "add", "ana@example.com", "--list", "news", ok=False).stderr

    result = cli("suppress", "rm", "Ana@Example.com", "--reason", "the complaint was forged, ticket 812")
    assert result.stdout.strip() == "ana@example.com may be mailed again (was: manual)"
    assert suppressed(cli) == []
    cli("subscriber", "add", "ana@example.com", "--list", "news")  # no longer refused
    [event] = audit(cli, "unsuppress")
    assert (event["subject"], event["reason"]) == ("ana@example.com", "the complaint was forged, ticket 812")
    assert event["actor"].startswith("cli")


def test_a_reason_is_required(cli: Cli) -> None:
    cli("suppress", "add", "ana@example.com")
    assert cli("suppress", "rm", "ana@example.com", ok=False).exit_code == 2
    result = cli("suppress", "rm", "ana@example.com", "--reason", "   ", ok=False)
    assert result.exit_code == 1
    assert result.stderr.strip() == "Error: a reason is required: it goes into the audit trail"
    assert [e["email"] for e in suppressed(cli)] == ["ana@example.com"]


def test_an_address_that_is_not_suppressed_is_one_line(cli: Cli) -> None:
    result = cli("suppress", "rm", "bob@example.com", "--reason", "typo", ok=False)
    assert result.exit_code == 1
    assert result.stderr.strip() == "Error: bob@example.com is not suppressed"
    assert audit(cli, "unsuppress") == []


def test_an_erasure_is_not_undone_by_naming_the_address(cli: Cli) -> None:
    cli("list", "create", "news")
    cli("subscriber", "add", "ana@example.com", "--list", "news")
    cli("subscriber", "forget", "ana@example.com", "--yes")
    result = cli("suppress", "rm", "ana@example.com", "--reason", "she wrote back", ok=False)
    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert "was erased" in line and "--erased" in line
    assert len(suppressed(cli)) == 1 and audit(cli, "unsuppress") == []

    cli("suppress", "rm", "ana@example.com", "--erased", "--reason", "she signed up again in person")
    assert suppressed(cli) == []
    [event] = audit(cli, "unsuppress")
    # the person asked to be forgotten: the trail keeps the hash, never the address
    assert event["subject"] == address_hash("ana@example.com")
    assert "ana@example.com" not in json.dumps(audit(cli, "unsuppress"))


def test_help_says_the_law_needs_renewed_consent(cli: Cli) -> None:
    text = " ".join(cli("suppress", "rm", "--help").stdout.split())
    assert "CAN-SPAM" in text and "consent again" in text and "--erased" in text
