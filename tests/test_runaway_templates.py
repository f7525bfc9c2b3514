"""A runaway campaign template fails in seconds with one line: no hang, no MemoryError, no traceback."""

from __future__ import annotations

import json
import multiprocessing
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from cli_helpers import Cli
from compose_helpers import make_campaign, make_config, make_recipient, render

from mailer.content.sandbox import render_clock
from mailer.content.templating import compile_template, render_template
from mailer.db import Database
from mailer.errors import TemplateError
from mailer.models import Campaign

# the render limit is 5 seconds; a loaded two-core machine may take a good deal longer to get there
BOUND = 60.0

RUNAWAYS = {
    "nested-loops": ("{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}",
                     "took longer than 5 seconds"),
    "repeat": ('{{ "x" * 10**10 }}', "would be longer than 1,000,000 characters"),
    "format-filter": ('{{ "%99999999999s"|format("x") }}', "would be longer than"),
    "format-star": ('{{ "%*s" % (10**9, "x") }}', "would be longer than"),
    "format-method": ('{{ "{:>{w}}".format(1, w=10**9) }}', "would be longer than"),
    "range-list": ("{{ range(10**6)|list }}", "Range too big"),
    "center": ('{{ "x"|center(10**10) }}', "would be longer than"),
    "ljust": ('{{ "x".ljust(10**10) }}', "would be longer than"),
    "join": ('{{ (["x" * 100000] * 100)|join("-") }}', "would be longer than"),
    "concat-doubling": ('{% set ns = namespace(s="x") %}{% for i in range(64) %}'
                        "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}", "would be longer than"),
    "plus-doubling": ('{% set ns = namespace(s="x") %}{% for i in range(64) %}'
                      "{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s }}", "would be longer than"),
    "power": ("{{ 7 ** 9999999 }}", "more than 64,000 bits"),
    "squaring": ("{% set ns = namespace(n=3) %}{% for i in range(64) %}"
                 "{% set ns.n = ns.n * ns.n %}{% endfor %}{{ ns.n }}", "would be longer than"),
    "output": ('{% for i in range(100000) %}{{ "y" * 1000 }}{% endfor %}', "rendered text would be longer"),
    "macro-recursion": ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "calls itself"),
    "batch-fill": ('{{ [1]|batch(10**9, "x")|list }}', "would be longer than"),
    "many-big-values": ('{{ "".join((["x" * 999999] * 1000)|map("upper")) }}', "characters in all"),
    # json.dumps writes the indent in C, out of the clock's reach: gigabytes before any check
    "tojson-indent": ('{{ {"a": 1}|tojson(indent=300000000) }}', "tojson's indent must be a number"),
    "tojson-indent-nested": ('{{ {"a": [1, [2, [3]]]}|tojson(indent=100000000) }}', "tojson's indent"),
    "tojson-indent-text": ('{{ {"a": [1]}|tojson(indent=" " * 999999) }}', "tojson's indent"),
    # a million references to one million-item list: 8 MB to hold, terabytes written out
    "tojson-shared": ("{% set a = [1] * 999999 %}{{ ([a] * 999999)|tojson }}", "would be longer than"),
    "output-shared": ("{% set a = [1] * 999999 %}{{ [a] * 999999 }}", "would be longer than"),
    "string-shared": ("{% set a = [1] * 999999 %}{{ ([a] * 999999)|string }}", "would be longer than"),
    "pprint-shared": ("{% set a = [1] * 999999 %}{{ ([a] * 999999)|pprint }}", "would be longer than"),
    "upper-shared": ("{% set a = [1] * 999999 %}{{ ([a] * 999999)|upper }}", "would be longer than"),
    "xmlattr-shared": ('{% set a = [1] * 999999 %}{{ {"k": [a] * 999999}|xmlattr }}', "would be longer than"),
    "concat-shared": ('{% set a = [1] * 999999 %}{{ "x" ~ ([a] * 999999) }}', "would be longer than"),
    "percent-shared": ('{% set a = [1] * 999999 %}{{ "%s" % ([a] * 999999,) }}', "would be longer than"),
    "format-shared": ('{% set a = [1] * 999999 %}{{ "{}".format([a] * 999999) }}', "would be longer than"),
    "join-shared": ('{% set a = [1] * 999999 %}{{ ([a] * 999999)|join(",") }}', "would be longer than"),
    "nested-doubling": ("{% set ns = namespace(x=[1]) %}{% for i in range(60) %}{% set ns.x = [ns.x, ns.x] %}"
                        "{% endfor %}{{ ns.x }}", "would be longer than"),
    "sum-lists": ('{% set a = [1] * 999999 %}{{ ([a] * 999)|sum(start=[])|length }}', "would be longer than"),
    "wordwrap-string": ('{{ ("a " * 400000)|wordwrap(1, wrapstring="x" * 999999) }}', "would be longer than"),
    "translate": ('{{ ("x" * 999999).translate({120: "y" * 999999}) }}', "would be longer than"),
    "bytes-center": ('{{ "x".encode().center(10**10) }}', "would be longer than"),
}


@pytest.fixture
def news(cli: Cli) -> Cli:
    cli("list", "create", "news")
    cli("subscriber", "add", "ana@example.com", "--list", "news", "--name", "Ana Lima")
    return cli


def one_line_error(stderr: str) -> str:
    assert stderr.startswith("Error: ") and stderr.count("\n") == 1, stderr
    assert "Traceback" not in stderr and "MemoryError" not in stderr
    return stderr


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("case", RUNAWAYS, ids=list(RUNAWAYS))
def test_create_refuses_a_runaway_template_in_seconds(news: Cli, tmp_path: Path, case: str) -> None:
    source, expected = RUNAWAYS[case]
    template = tmp_path / "runaway.html.j2"
    template.write_text(f"<p>Hello {{{{ subscriber.name }}}}</p>{source}", encoding="utf-8")
    started = time.monotonic()
    result = news("campaign", "create", "--list", "news", "--subject", "Spring concerts",
                  "--template", str(template), ok=False)
    assert time.monotonic() - started < BOUND
    assert result.exit_code == 1
    assert expected in one_line_error(result.stderr)
    assert json.loads(news("campaign", "ls", "--json").output) == []


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("case", ["nested-loops", "repeat", "output"])
def test_check_send_and_preview_refuse_a_stored_runaway(news: Cli, database: Database, case: str) -> None:
    news("campaign", "create", "--list", "news", "--subject", "Spring concerts", "--template", "welcome")
    with database.session() as session:  # stored by an older version, or edited in the database
        session.execute(sa.update(Campaign).values(html_template=RUNAWAYS[case][0], text_template=None))
    for command in (["campaign", "check", "1"], ["campaign", "preview", "1"], ["campaign", "send", "1"]):
        started = time.monotonic()
        result = news(*command, ok=False)
        assert time.monotonic() - started < BOUND * 2, command
        assert result.exit_code == 1, command
        assert RUNAWAYS[case][1] in result.stderr, (command, result.stderr)
        assert "Traceback" not in result.stderr
    [campaign] = json.loads(news("campaign", "ls", "--json").output)
    assert campaign["status"] == "draft"  # the send never started


def test_a_subscriber_whose_data_makes_the_template_run_away_fails_alone() -> None:
    # the gate renders a sample; a real value can still drive the loop
    html = ('<p>Hi {{ subscriber.name }}</p>{% for i in range(subscriber.attributes.get("n", 1)|int) %}'
            '{% for j in range(subscriber.attributes.get("n", 1)|int) %}{% endfor %}{% endfor %}')
    campaign = make_campaign(html=html, text=None)
    render(make_config(), campaign, make_recipient(attributes={"n": "1"}))
    started = time.monotonic()
    with pytest.raises(TemplateError, match="took longer than 5 seconds"):
        render(make_config(), campaign, make_recipient(attributes={"n": "99999"}))
    assert time.monotonic() - started < BOUND


def test_a_subscriber_who_takes_a_runaway_branch_fails_alone_and_quickly() -> None:
    # the gate renders a sample subscriber; the runaway branch waits for one real address
    html = ('<p>Hi {{ subscriber.name }}</p>{% if subscriber.email == "bob@example.com" %}'
            '{{ {"a": [1, [2, [3]]]}|tojson(indent=100000000) }}{% endif %}')
    campaign = make_campaign(html=html, text=None)
    assert "Hi Ana Lima" in render(make_config(), campaign, make_recipient()).data.decode()
    started = time.monotonic()
    with pytest.raises(TemplateError, match="tojson's indent must be a number"):
        render(make_config(), campaign, make_recipient(email="bob@example.com", name="Bob"))
    assert time.monotonic() - started < 5  # refused before it runs, not stopped by the clock
    assert "Hi Cy" in render(make_config(), campaign, make_recipient(email="cy@example.com", name="Cy")).data.decode()


def _create_in_child(config_path: str, template: str) -> tuple[int, str, float, int]:
    """`mailer campaign create` in a process of its own, capped at 2 GB; its exit, stderr, time and peak KB."""
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "mailer", "--config", config_path, "campaign", "create", "--list", "news",
         "--subject", "Spring concerts", "--template", template],
        capture_output=True, text=True, timeout=BOUND * 2, preexec_fn=cap, check=False,
    )
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return done.returncode, done.stderr, time.monotonic() - started, peak


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("case", ["tojson-indent", "tojson-indent-nested", "tojson-shared", "output-shared"])
def test_a_runaway_written_in_c_costs_seconds_and_little_memory(
    news: Cli, tmp_path: Path, case: str
) -> None:
    template = tmp_path / "runaway.html.j2"
    template.write_text(f"<p>Hello {{{{ subscriber.name }}}}</p>{RUNAWAYS[case][0]}", encoding="utf-8")
    # the peak is of all children so far: measured in a fresh process, only this one counts
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        code, stderr, seconds, peak_kb = pool.apply(_create_in_child, (str(news.config_path), str(template)))
    assert code == 1 and RUNAWAYS[case][1] in one_line_error(stderr)
    assert seconds < BOUND / 3, seconds
    assert peak_kb < 400 * 1024, peak_kb


def _render_in_child(source: str) -> str:
    # what a render helper does: a spawned process renders in its main thread
    try:
        return render_template(compile_template(source, html=True, label="HTML template t"), {},
                               label="HTML template t")
    except TemplateError as exc:
        return f"error: {exc}"


def test_a_spawned_render_helper_is_bounded_too() -> None:
    context = multiprocessing.get_context("spawn")
    started = time.monotonic()
    with context.Pool(1) as pool:
        answer = pool.apply(_render_in_child, (RUNAWAYS["nested-loops"][0],))
    assert answer.startswith("error: HTML template t: rendering took longer than 5 seconds")
    assert time.monotonic() - started < BOUND


def test_ordinary_templates_still_render() -> None:
    source = ('{{ "%5s"|format("x") }} {{ 2 ** 10 }} {{ "a" ~ "b" }} {{ [1, 2]|join(",") }} '
              '{{ "ab"|center(6) }} {{ ("x" * 3)|upper }} {{ "{:>4}".format(7) }} {{ "%d%%" % 25 }}')
    rendered = render_template(compile_template(source, html=False, label="t"), {}, label="t")
    assert rendered == '    x 1024 ab 1,2   ab   XXX    7 25%'


def test_the_render_clock_still_stops_a_render_after_something_else_took_its_signal() -> None:
    endless = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    template = compile_template(endless, html=False, label="text template news")
    with render_clock(0.05):
        pass  # the clock's handler is set
    # a stray alarm outside any render changes nothing
    os.kill(os.getpid(), signal.SIGALRM)
    previous = signal.signal(signal.SIGALRM, signal.SIG_DFL)  # another part of the process takes the signal
    try:
        with pytest.raises(TemplateError, match="took longer than"), render_clock(0.05):
            render_template(template, {}, label="text template news")
    finally:
        signal.signal(signal.SIGALRM, previous)
