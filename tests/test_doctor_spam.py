"""`mailer campaign check ID --spam`: the real SpamAssassin's verdict on a sample message, with fixes."""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import pytest
from cli_helpers import Cli, write_config

from mailer.db import Database
from mailer.doctor.spam import fix_for, parse_report, spamassassin_path

needs_spamassassin = pytest.mark.skipif(
    spamassassin_path() is None,
    reason="needs SpamAssassin (apt-get install spamassassin spamc; .ci/run installs it)",
)

IMAGE_ONLY = """<html><body>
<a href="https://harmonymails.com/sale"><img src="https://harmonymails.com/sale.png" width="600" height="900"></a>
</body></html>
"""


@pytest.fixture
def shop(tmp_path: Path) -> Cli:
    """A list and a campaign that is one big linked image and hardly any words."""
    db = Database(f"sqlite:///{tmp_path / 'mailer.db'}")
    db.upgrade()
    db.dispose()
    cli = Cli(write_config(tmp_path / "mailer.toml", f"sqlite:///{tmp_path / 'mailer.db'}"))
    cli("list", "create", "news", "--title", "Harmony News")
    cli("subscriber", "add", "ana@example.com", "--list", "news", "--name", "Ana Lima")
    (tmp_path / "sale.html.j2").write_text(IMAGE_ONLY, encoding="utf-8")
    cli("campaign", "create", "--list", "news", "--subject", "Our spring sale",
        "--template", str(tmp_path / "sale.html.j2"))
    return cli


@needs_spamassassin
@pytest.mark.slow
def test_spamassassin_scores_the_campaign_and_says_how_to_fix_the_template(shop: Cli) -> None:
    result = shop("campaign", "check", "1", "--spam", ok=False)
    assert "SpamAssassin: score " in result.output
    assert "HTML_IMAGE_" in result.output or "HTML_SHORT_LINK_IMG_" in result.output, result.output
    assert "fix: " in result.output
    report = json.loads(shop("campaign", "check", "1", "--spam", "--json", ok=False).output)
    assert report["spam"]["installed"] is True
    fixed = [rule for rule in report["spam"]["rules"] if rule["fix"]]
    assert fixed and all(rule["description"] for rule in fixed)


def test_without_spamassassin_it_says_how_to_install_it_and_the_gate_still_runs(
    shop: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty) + os.pathsep + "/nonexistent")
    result = shop("campaign", "check", "1", "--spam", ok=False)
    assert "SpamAssassin is not installed" in result.stderr and "apt-get install spamassassin" in result.stderr
    assert "compliance gate" in result.output + result.stderr


def test_the_report_is_read_rule_by_rule_with_wrapped_descriptions() -> None:
    report = (
        "Content analysis details:   (6.2 points, 5.0 required)\n\n"
        " pts rule name              description\n"
        "---- ---------------------- --------------------------------------------------\n"
        " 2.0 HTML_IMAGE_RATIO_02    BODY: HTML has a low ratio of text to image\n"
        "                            area\n"
        " 0.5 SUBJ_ALL_CAPS          Subject is all capitals\n"
        " 3.7 SOMETHING_ELSE         Not about the template\n"
        "\nThe original message was not completely plain text\n"
    )
    verdict = parse_report(report)
    assert verdict.is_spam and verdict.score == 6.2
    assert [r.name for r in verdict.rules] == ["HTML_IMAGE_RATIO_02", "SUBJ_ALL_CAPS", "SOMETHING_ELSE"]
    assert verdict.rules[0].description.endswith("text to image area")
    assert "more words" in verdict.rules[0].fix or "add words" in verdict.rules[0].fix
    assert fix_for("SOMETHING_ELSE") == "" and fix_for("MPART_ALT_DIFF_COUNT")


@pytest.mark.skipif(shutil.which("spamc") is None, reason="needs spamc (apt-get install spamc)")
def test_spamc_without_spamd_is_one_line_and_the_gate_still_answers(
    shop: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    only_spamc = tmp_path / "only-spamc"
    only_spamc.mkdir()
    (only_spamc / "spamc").symlink_to(str(shutil.which("spamc")))
    monkeypatch.setenv("PATH", str(only_spamc))
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 783)) == 0:
            pytest.skip("a spamd listens on this machine: spamc would reach it")
    result = shop("campaign", "check", "1", "--spam", ok=False)
    assert "no spam score: spamc could not reach spamd" in result.stderr
    assert "fails the compliance gate" in result.stderr
