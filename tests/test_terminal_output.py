"""Text strangers wrote (names, reasons, subjects, complaint reports, file names) never drives the terminal."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pytest
from cli_helpers import Cli, write_config
from click.testing import Result
from hypothesis import given
from hypothesis import strategies as st
from smtp_faults import FaultyServer

from mailer.cli.terminal import json_terminal_safe, terminal_safe

FIXTURES = Path(__file__).parent / "fixtures" / "inbound"
BIDI = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# retitles the window, clears the screen, backspaces, returns the carriage, reverses what follows
HOSTILE = "\x1b]0;pwned\x07\x1b[2J\x08\rX\u202eevil\u2066\x9b31m"
ONE_LINE = HOSTILE.replace("\r", "")  # for a list title or subject, which refuse line breaks
BIDI_ONLY = "Ana \u202egnp.exe"  # names and attributes refuse controls, but not bidi overrides


def unsafe_characters(text: str) -> list[str]:
    """Every character a terminal would obey rather than show; a newline between lines is fine."""
    return [
        ch for ch in text
        if ch != "\n" and (unicodedata.category(ch) in ("Cc", "Cs") or ch in BIDI or ch in "\u2028\u2029")
    ]


def printed(result: Result) -> str:
    return result.stdout + result.stderr


@pytest.fixture
def hostile(tmp_path: Path, cli: Cli, smtp_server: FaultyServer) -> Cli:
    """A database holding hostile text that came in through the real paths, and a CLI on it."""
    config_path = write_config(tmp_path / "mailer.toml", _db_url(cli), smtp_server)
    cli = Cli(config_path)
    cli("list", "create", "news", "--title", f"News {ONE_LINE}")
    cli("subscriber", "add", "ana@example.net", "--list", "news", "--name", BIDI_ONLY, "--attr", f"city={BIDI_ONLY}")
    cli("subscriber", "add", "bob@example.org", "--list", "news")
    cli("suppress", "add", "carl@example.com", "--reason", f"asked {HOSTILE}")
    csv_path = tmp_path / "people\x1b[31m\u202e.csv"
    csv_path.write_text(
        f"email,name,team\nzoe@example.com,{BIDI_ONLY},{BIDI_ONLY}\n\x1b[31mbad\u202e@,x,y\n", encoding="utf-8"
    )
    cli.import_output = printed(cli("subscriber", "import", str(csv_path), "--list", "news"))  # type: ignore[attr-defined]
    cli("campaign", "create", "--list", "news", "--subject", "Our autumn collection is here", "--template", "welcome")
    cli("campaign", "send", "1")
    # a spam complaint about ana's message, its report written by a hostile feedback loop
    verp = next(m.mail_from for m in smtp_server.messages if m.rcpt_tos == ["ana@example.net"])
    complaint = (FIXTURES / "yahoo_complaint.eml").read_text(encoding="utf-8").replace("{{VERP}}", verp)
    complaint = complaint.replace("User-Agent: Yahoo!-Mail-Feedback/2.0", "User-Agent: \x1b]0;pwned\x07\x1b[2J\x08")
    question = (FIXTURES / "question.eml").read_text(encoding="utf-8").replace(
        "Subject: Question about the autumn collection",
        "Subject: Question \x1b[2J\x08 =?utf-8?q?=E2=80=AE=C2=9B31m?=",
    ).replace("From: Carla <carla@example.com>", "From: =?utf-8?q?Carla_=E2=80=AE?= <carla@example.com>")
    maildir = tmp_path / "Maildir"
    for sub in ("tmp", "new", "cur"):
        (maildir / sub).mkdir(parents=True)
    (maildir / "new" / "1.complaint").write_text(complaint, encoding="utf-8")
    (maildir / "new" / "2.question").write_text(question, encoding="utf-8")
    cli.inbound_output = printed(cli("inbound", "process", str(maildir)))  # type: ignore[attr-defined]
    cli("campaign", "create", "--list", "news", "--subject", f"Winter {ONE_LINE}", "--template", "welcome", ok=False)
    return cli


def _db_url(cli: Cli) -> str:
    text = cli.config_path.read_text(encoding="utf-8")
    return text.split('url = "', 1)[1].split('"', 1)[0]


HUMAN_COMMANDS = [
    ("suppress", "ls"),
    ("audit", "ls"),
    ("subscriber", "ls", "--list", "news"),
    ("subscriber", "show", "ana@example.net"),
    ("subscriber", "show", "zoe@example.com"),
    ("list", "ls"),
    ("campaign", "ls"),
    ("campaign", "status", "1"),
    ("campaign", "status", "2"),
    ("campaign", "check", "2"),
    ("campaign", "preview", "1", "--email", "ana@example.net"),
    ("campaign", "cancel", "2", "--reason", HOSTILE),
    ("campaign", "status", "2"),
    ("subscriber", "update", "ana@example.net", "--attr", f"team={BIDI_ONLY}"),
    ("subscriber", "add", "zoe@example.com", "--list", "news"),
    ("suppress", "add", "carl@example.com", "--reason", HOSTILE),
]


def test_every_human_output_shows_hostile_text_escaped(hostile: Cli) -> None:
    outputs = {"subscriber import": hostile.import_output,  # type: ignore[attr-defined]
               "inbound process": hostile.inbound_output}  # type: ignore[attr-defined]
    for args in HUMAN_COMMANDS:
        outputs[" ".join(args)] = printed(hostile(*args, ok=False))
    leaks = {command: unsafe_characters(text) for command, text in outputs.items() if unsafe_characters(text)}
    assert leaks == {}
    everything = "\n".join(outputs.values())
    # shown, not dropped: the operator sees what was there
    assert "complaint (\\x1b]0;pwned\\x07\\x1b[2J\\x08)" in outputs["suppress ls"]
    assert "asked \\x1b]0;pwned\\x07\\x1b[2J\\x08 X\\u202eevil\\u2066\\x9b31m" in outputs["audit ls"]
    assert "Ana \\u202egnp.exe" in outputs["subscriber ls --list news"]
    assert "people\\x1b[31m\\u202e.csv" in outputs["subscriber import"]
    assert "Question \\u001b[2J\\b \\u202e\\x9b31m" in outputs["inbound process"]  # JSON-quoted
    assert "News \\x1b]0;pwned" in outputs["list ls"]
    assert "reason: \\x1b]0;pwned" in everything


def test_json_output_is_real_json_with_every_control_escaped(hostile: Cli) -> None:
    for args in (("suppress", "ls"), ("audit", "ls"), ("subscriber", "show", "ana@example.net"),
                 ("list", "ls"), ("subscriber", "ls", "--list", "news")):
        output = hostile(*args, "--json").stdout
        assert unsafe_characters(output) == [], args
        json.loads(output)
    sources = [e["source"] for e in json.loads(hostile("suppress", "ls", "--json").stdout)]
    assert "complaint (\x1b]0;pwned\x07\x1b[2J\x08)" in sources  # the value itself, intact
    [zoe] = [s for s in json.loads(hostile("subscriber", "ls", "--list", "news", "--json").stdout)
             if s["email"] == "zoe@example.com"]
    assert zoe["name"] == BIDI_ONLY


def test_an_error_quoting_stored_text_is_escaped(cli: Cli) -> None:
    cli("list", "create", "news")
    result = cli("subscriber", "add", "\u202egro.elpmaxe@ana", "--list", "news", ok=False)
    assert result.exit_code == 1
    assert unsafe_characters(printed(result)) == []
    assert "\\u202e" in result.stderr


UNSAFE_CODEPOINTS = st.sampled_from(
    [chr(c) for c in (*range(0x20), *range(0x7F, 0xA0))] + sorted(BIDI) + ["\u2028", "\u2029", "\ud800"]
)


@given(st.lists(st.one_of(st.text(max_size=20), UNSAFE_CODEPOINTS), max_size=20).map("".join))
def test_terminal_safe_leaves_no_control_and_keeps_what_it_escapes_visible(text: str) -> None:
    shown = terminal_safe(text)
    assert [ch for ch in shown if unicodedata.category(ch) in ("Cc", "Cs") or ch in BIDI] == []
    assert "\u2028" not in shown and "\u2029" not in shown
    assert len(shown) >= len(text)
    assert terminal_safe(shown) == shown  # escaping twice changes nothing more


@given(st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")).filter(
    lambda ch: ch not in BIDI)))
def test_terminal_safe_leaves_printable_text_alone(text: str) -> None:
    assert terminal_safe(text) == text


@given(st.recursive(st.text(), lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner,
                                                                                             max_size=4)))
def test_json_terminal_safe_is_the_same_json(data: object) -> None:
    text = json_terminal_safe(json.dumps(data, ensure_ascii=False))
    assert json.loads(text) == data
    assert [ch for ch in text if unicodedata.category(ch) in ("Cc", "Cs") or ch in BIDI] == []
