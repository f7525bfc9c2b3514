"""CSV import: a marketer can trust it with a real export from another tool."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cli_helpers import Cli
from hypothesis import given, settings
from hypothesis import strategies as st

from mailer.db import Database
from mailer.errors import ImportFileError
from mailer.models import MailingList, Subscriber, Subscription
from mailer.recipients.importer import import_csv


def write_csv(tmp_path: Path, text: str, name: str = "people.csv", encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def imported(cli: Cli, path: Path, *extra: str) -> dict[str, Any]:
    result = cli("subscriber", "import", str(path), "--list", "news", "--json", *extra)
    data: dict[str, Any] = json.loads(result.output)
    return data


def members(cli: Cli) -> dict[str, dict[str, Any]]:
    rows = json.loads(cli("subscriber", "ls", "--list", "news", "--json").output)
    return {row["email"]: row for row in rows}


@pytest.fixture
def news(cli: Cli) -> Cli:
    cli("list", "create", "news")
    return cli


def test_import_maps_name_keeps_attributes_and_reports_each_outcome(news: Cli, tmp_path: Path) -> None:
    news("subscriber", "add", "old@example.com", "--list", "news", "--name", "Old")
    news("suppress", "add", "gone@example.com")
    path = write_csv(tmp_path, (
        "\ufeffEmail,Name,City,plan\r\n"            # BOM and mixed-case header, as Excel writes it
        "ana@example.com,Ana Lima,Lisbon,gold\r\n"
        "old@example.com,Old,,\r\n"                  # already there, nothing new
        "OLD@example.com,Older,,\r\n"                # same person again: an update
        "gone@example.com,Gone,,\r\n"                # opted out: skipped
        "not-an-address,Nobody,,\r\n"
        "\r\n"                                        # blank line: not a row
        "zoe@exämple.com,Zoë,Zürich,\r\n"
        "zoë@example.com,Zoë,,\r\n"                  # needs SMTPUTF8: refused
        "short@example.com\r\n"
    ))
    report = imported(news, path)
    assert report["rows"] == 8
    assert (report["added"], report["updated"], report["already_subscribed"]) == (2, 1, 1)
    assert report["skipped_suppressed"] == 1
    assert report["invalid"] == 3
    assert [p["line"] for p in report["problems"]] == [6, 9, 10]
    assert "invalid email address 'not-an-address'" in report["problems"][0]["reason"]
    assert "non-ASCII mailbox name needs SMTPUTF8" in report["problems"][1]["reason"]
    assert "has 1 fields; the header has 4" in report["problems"][2]["reason"]
    people = members(news)
    assert set(people) == {"ana@example.com", "old@example.com", "zoe@exämple.com"}
    assert people["ana@example.com"]["attributes"] == {"city": "Lisbon", "plan": "gold"}
    assert people["old@example.com"]["name"] == "Older"


def test_text_report_names_lines(news: Cli, tmp_path: Path) -> None:
    path = write_csv(tmp_path, "email,name\nana@example.com,Ana\nbroken@,B\n")
    output = news("subscriber", "import", str(path), "--list", "news").output
    assert "added                 1" in output
    assert "line 3: invalid email address 'broken@'" in output


def test_name_with_line_break_is_an_invalid_row_not_a_header(news: Cli, tmp_path: Path) -> None:
    path = write_csv(tmp_path, 'email,name\n"ana@example.com","Ana\r\nBcc: victim@example.com"\n')
    report = imported(news, path)
    assert report["invalid"] == 2 and report["added"] == 0
    # a row is one line: the opened quote makes line 2 invalid, and line 3 is judged on its own
    assert [p["line"] for p in report["problems"]] == [2, 3]
    assert "line breaks" in report["problems"][0]["reason"]


def test_dry_run_reports_and_writes_nothing(news: Cli, tmp_path: Path) -> None:
    path = write_csv(tmp_path, "email\nana@example.com\nbob@example.com\n")
    report = imported(news, path, "--dry-run")
    assert report["dry_run"] is True and report["added"] == 2
    assert members(news) == {}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"name,city\nAna,Lisbon\n", "has no 'email' column"),
        ("email,name\nana@example.com,Ana\nbob@example.com,J\xf6rg\n".encode("latin-1"), "line 3: not UTF-8"),
        (b"", "the file is empty"),
        (b"email,email\na@example.com,b@example.com\n", "names the column 'email' twice"),
    ],
)
def test_file_level_problems_are_one_line_and_import_nothing(
    news: Cli, tmp_path: Path, content: bytes, expected: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    result = news("subscriber", "import", str(path), "--list", "news", ok=False)
    assert result.exit_code == 1
    assert expected in result.stderr
    assert result.stderr.count("\n") == 1
    assert members(news) == {}


def test_missing_file_and_unknown_list(news: Cli, tmp_path: Path) -> None:
    missing = news("subscriber", "import", str(tmp_path / "nope.csv"), "--list", "news", ok=False)
    assert missing.exit_code == 1 and "no such file" in missing.stderr
    path = write_csv(tmp_path, "email\nana@example.com\n")
    unknown = news("subscriber", "import", str(path), "--list", "nope", ok=False)
    assert unknown.exit_code == 1 and "no list named 'nope'" in unknown.stderr


def test_not_utf8_late_in_a_large_file_leaves_nothing_half_written(news: Cli, tmp_path: Path) -> None:
    news("subscriber", "add", "keep@example.com", "--list", "news", "--name", "Keep")
    rows = "".join(f"p{i}@example.com,Person {i}\n" for i in range(10_000))
    path = tmp_path / "big.csv"
    path.write_bytes(b"email,name\n" + rows.encode() + "late@example.com,J\xf6rg\n".encode("latin-1"))
    result = news("subscriber", "import", str(path), "--list", "news", ok=False)
    assert "line 10002: not UTF-8" in result.stderr
    assert list(members(news)) == ["keep@example.com"]


def test_interrupted_import_leaves_nothing(database: Database, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from mailer.recipients import importer
    from mailer.recipients.lists import create_list

    with database.session() as session:
        create_list(session, "news")
    path = write_csv(tmp_path, "email\n" + "".join(f"p{i}@example.com\n" for i in range(5000)))
    calls = {"n": 0}
    real = importer._apply_chunk

    def interrupt_on_second_chunk(*args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        real(*args, **kwargs)

    monkeypatch.setattr(importer, "_apply_chunk", interrupt_on_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        import_csv(database, path, "news")
    with database.session() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Subscriber)) == 0
        assert session.scalar(sa.select(sa.func.count()).select_from(Subscription)) == 0


def test_consent_columns_are_recorded(news: Cli, tmp_path: Path) -> None:
    path = write_csv(tmp_path, "email,consent_at,consent_ip,consent_source\n"
                               "ana@example.com,2024-03-01T09:30:00Z,203.0.113.9,web form\n"
                               "bob@example.com,yesterday,,\n")
    report = imported(news, path)
    assert report["added"] == 1 and report["invalid"] == 1
    assert "consent_at 'yesterday'" in report["problems"][0]["reason"]
    shown = json.loads(news("subscriber", "show", "ana@example.com", "--json").output)
    consent = shown["subscriptions"][0]["consent"]
    assert consent["at"].startswith("2024-03-01T09:30:00")
    assert consent["ip"] == "203.0.113.9"
    assert "web form" in consent["source"]


def test_import_into_postgres_and_sqlite_alike(database: Database, tmp_path: Path) -> None:
    from mailer.recipients.lists import create_list

    with database.session() as session:
        create_list(session, "news")
    path = write_csv(tmp_path, "email,name\n" + "".join(f"P{i}@Example.com,N{i}\n" for i in range(4500))
                     + "p7@example.com,Seven\n")
    report = import_csv(database, path, "news")
    assert (report.added, report.updated) == (4500, 1)
    second = import_csv(database, path, "news")
    assert (second.added, second.updated, second.unchanged) == (0, 2, 4499)


def test_headers_from_other_tools_become_attribute_names(news: Cli, tmp_path: Path) -> None:
    path = write_csv(tmp_path, "Email Address,First Name,Last-Name,2nd phone\nana@example.com,Ana,Lima,555\n")
    result = news("subscriber", "import", str(path), "--list", "news", ok=False)
    assert "no 'email' column" in result.stderr  # "Email Address" is not guessed to be the address
    path = write_csv(tmp_path, "email,First Name,Last-Name,2nd phone\nana@example.com,Ana,Lima,555\n")
    assert imported(news, path)["added"] == 1
    assert members(news)["ana@example.com"]["attributes"] == {
        "first_name": "Ana", "last_name": "Lima", "col_2nd_phone": "555"}


def test_a_stray_quote_makes_its_own_line_invalid_and_loses_no_row_after_it(news: Cli, tmp_path: Path) -> None:
    path = write_csv(tmp_path, (
        "email,name\n"
        "ana@example.com,Ana\n"
        '"bob@example.com,Bob\n'        # the quote is never closed
        "carl@example.com,Carl\n"
        'dora@example.com,"Dora\r\n'    # nor here, before a CRLF
        "eve@example.com,Eve"           # the last line, without a line break
    ))
    output = news("subscriber", "import", str(path), "--list", "news").output
    assert "4 rows" not in output and "5 rows" in output
    assert "line 3: a quoted value is not closed on this line" in output
    assert "line 5: a quoted value is not closed on this line" in output
    assert set(members(news)) == {"ana@example.com", "carl@example.com", "eve@example.com"}


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("email,First Name,first-name", "the columns 'first name' and 'first-name' both become the attribute 'first_name'"),
        ("email,City,CITY ", "names the column 'city' twice"),
        ("Email,name,EMAIL", "names the column 'email' twice"),
    ],
)
def test_columns_that_collide_are_refused_at_the_header(
    news: Cli, tmp_path: Path, header: str, expected: str
) -> None:
    path = write_csv(tmp_path, f"{header}\nana@example.com,Ana,Lima\n")
    result = news("subscriber", "import", str(path), "--list", "news", ok=False)
    assert result.exit_code == 1
    assert expected in result.stderr
    assert result.stderr.count("\n") == 1
    assert members(news) == {}


def test_a_line_over_one_mib_is_a_bad_row_and_is_never_held_in_memory(
    database: Database, tmp_path: Path
) -> None:
    import tracemalloc

    from mailer.recipients.lists import create_list

    with database.session() as session:
        create_list(session, "news")
    path = tmp_path / "huge.csv"
    with open(path, "wb") as fh:
        fh.write(b"email,name\nana@example.com,Ana\nbob@example.com,")
        for _ in range(48):  # a 48 MiB name, and a quote that never closes, on line 3
            fh.write(b'"' + b"x" * (1024 * 1024 - 1))
        fh.write(b"\ncarl@example.com,Carl\n")
    tracemalloc.start()
    try:
        report = import_csv(database, path, "news")
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (report.rows, report.added, report.invalid) == (3, 2, 1)
    assert (report.problems[0].line, report.problems[0].reason) == (3, "the line is longer than 1 MiB")
    assert peak < 16 * 1024 * 1024, f"peak {peak / 2**20:.0f} MiB"


# lines made of the characters that trouble CSV readers, plus rows that are plainly fine
_TRICKY = st.lists(st.sampled_from(
    [*'",; \t\r\x00xa@.', "é", "\ufeff", "\u202e", "\x85", "\u2028", "ana@example.com", "Zoë"]
), max_size=12).map("".join)
_GOOD = st.integers(0, 30).map(lambda i: f"p{i}@example.com,Person {i}")
_LINE = st.one_of(_TRICKY, _GOOD, st.integers(60, 200).map(lambda n: "y" * n))
_ENDING = st.sampled_from(["\n", "\r\n", "\r\n", "\n"])


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@given(lines=st.lists(st.tuples(_LINE, _ENDING), max_size=25), bom=st.booleans(), last_newline=st.booleans())
@settings(max_examples=120)
def test_every_line_with_content_is_accounted_for(
    database: Database, tmp_path: Path, lines: list[tuple[str, str]], bom: bool, last_newline: bool
) -> None:
    from mailer.errors import AlreadyExistsError, ImportFileError
    from mailer.recipients import importer
    from mailer.recipients.lists import create_list

    try:
        with database.session() as session:
            create_list(session, "news")  # once: the imports below are dry runs
    except AlreadyExistsError:
        pass
    text = ("\ufeff" if bom else "") + "email,name\n" + "".join(line + end for line, end in lines)
    if lines and not last_newline:
        text = text.removesuffix(lines[-1][1])
    path = tmp_path / "prop.csv"
    path.write_bytes(text.encode("utf-8"))
    original_cap = importer.MAX_LINE_BYTES
    importer.MAX_LINE_BYTES = 64  # long lines without writing megabytes
    try:
        report = import_csv(database, path, "news", dry_run=True)
    except ImportFileError as exc:
        assert "\n" not in str(exc)
        raise AssertionError(f"a file-level error for a file with a good header: {exc}") from exc
    finally:
        importer.MAX_LINE_BYTES = original_cap
    physical = text.encode("utf-8").split(b"\n")[1:]
    if physical and physical[-1] == b"":
        physical.pop()  # the line break ends the last line; it does not start another
    with_content = [n for n, raw in enumerate(physical, 2)
                    if len(raw) > 64 or raw.decode("utf-8").replace(",", "").strip()]
    accounted = (report.added + report.updated + report.unchanged + report.suppressed
                 + report.unsubscribed + report.invalid)
    assert report.rows == len(with_content)
    assert accounted == report.rows
    assert {p.line for p in report.problems} <= set(with_content)
    assert len({p.line for p in report.problems}) == report.invalid



@pytest.mark.parametrize(
    ("header", "position"),
    [
        ("email,name,,city", 3),       # a stray empty column from a spreadsheet
        ("email,name, ,city", 3),      # blank is empty too
        (",email,name,city", 1),
        ("email,name,city,", 4),       # a trailing comma: whatever is under it would go unseen
    ],
)
def test_a_column_without_a_name_is_refused_at_the_header(
    news: Cli, tmp_path: Path, header: str, position: int
) -> None:
    path = write_csv(tmp_path, f"{header}\nx1@example.com,X One,VIP-notes,Paris\n")
    result = news("subscriber", "import", str(path), "--list", "news", ok=False)
    assert result.exit_code == 1
    assert f"line 1: column {position} has no name" in result.stderr
    assert result.stderr.count("\n") == 1
    assert members(news) == {}


@settings(max_examples=40)
@given(
    names=st.lists(st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True), min_size=1, max_size=5, unique=True)
    .filter(lambda names: "email" not in names),
    blank=st.sampled_from(["", " ", "\t"]),
    data=st.data(),
)
def test_any_header_with_an_empty_cell_names_that_cell_and_imports_nothing(
    tmp_path_factory: pytest.TempPathFactory, database: Database,
    names: list[str], blank: str, data: st.DataObject,
) -> None:
    columns = ["email", *names]
    position = data.draw(st.integers(min_value=0, max_value=len(columns)), label="position")
    columns.insert(position, blank)
    row = ["ana@example.com" if c == "email" else f"v{i}" for i, c in enumerate(columns)]
    path = tmp_path_factory.mktemp("csv") / "people.csv"
    path.write_text(",".join(columns) + "\n" + ",".join(row) + "\n", encoding="utf-8")
    with database.session() as session:
        if session.scalar(sa.select(MailingList.id).where(MailingList.name == "news")) is None:
            session.add(MailingList(name="news", title="News"))
    with pytest.raises(ImportFileError, match=f"line 1: column {position + 1} has no name"):
        import_csv(database, path, "news")
    with database.session() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Subscriber)) == 0
