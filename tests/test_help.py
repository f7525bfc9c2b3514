"""Every command explains itself: --help works and shows an example."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from mailer.cli import COMMANDS, main

FIXTURES = Path(__file__).parent / "fixtures" / "inbound"


def all_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found: list[tuple[str, ...]] = [prefix]
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, f"`mailer {' '.join((*prefix, name))}` is listed but does not load"
        if isinstance(command, click.Group):
            found.extend(all_commands(command, (*prefix, name)))
        else:
            found.append((*prefix, name))
    return found


@pytest.mark.parametrize("path", all_commands(main), ids=lambda p: " ".join(p) or "mailer")
def test_every_command_has_help_with_an_example(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output, f"`mailer {' '.join(path)} --help` shows no example"


def test_python_dash_m_mailer_runs() -> None:
    done = subprocess.run([sys.executable, "-m", "mailer", "--version"], capture_output=True, text=True)
    assert done.returncode == 0
    assert done.stdout.startswith("mailer, version ")


def test_the_command_list_shows_each_commands_own_help() -> None:
    every = all_commands(main)  # loads every command module
    assert set(main.commands) == set(COMMANDS), "a top-level command is missing from mailer.cli.COMMANDS"
    for name, (_, short_help) in COMMANDS.items():
        assert main.commands[name].get_short_help_str(200) == short_help, name
    assert len(every) > len(COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_command_run_on_its_own_has_all_its_subcommands(name: str) -> None:
    # a fresh interpreter loads only what the command declares, as `mailer NAME ...` does
    script = (
        "import click, sys; from mailer.cli import main; ctx = click.Context(main);"
        f"command = main.get_command(ctx, {name!r});"
        "print(sorted(command.commands) if isinstance(command, click.Group) else [])"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    full = main.get_command(click.Context(main), name)
    expected = sorted(full.commands) if isinstance(full, click.Group) else []
    assert done.stdout.strip() == str(expected)


def test_help_and_a_piped_bounce_do_not_load_what_they_do_not_use(tmp_path: Path) -> None:
    config = tmp_path / "mailer.toml"
    database = tmp_path / "m.db"
    config.write_text(f'[database]\nurl = "sqlite:///{database}"\n', encoding="utf-8")
    env = {**os.environ, "MAILER_CONFIG": str(config), "MAILER_SECRET_KEYS": "k" * 32}
    subprocess.run([sys.executable, "-m", "mailer", "db", "upgrade"], env=env, check=True, capture_output=True)
    probe = (
        "import sys; from mailer.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "heavy = ('sqlalchemy', 'flask', 'aiosmtplib', 'jinja2', 'alembic', 'waitress', 'inscriptis')\n"
        "print(' '.join(sorted(m for m in heavy if m in sys.modules)), file=sys.stderr)"
    )
    shown = subprocess.run([sys.executable, "-c", probe, "--help"], env=env, capture_output=True, text=True)
    assert "Commands:" in shown.stdout
    assert shown.stderr.strip() == ""
    dsn = (FIXTURES / "postfix_hard_bounce.eml").read_bytes()
    piped = subprocess.run([sys.executable, "-c", probe, "inbound", "process", "-"], env=env, input=dsn,
                           capture_output=True)
    assert b"unmatched: 1" in piped.stdout
    assert piped.stderr.decode().strip().splitlines()[-1] == "sqlalchemy"


def test_examples_name_the_revision_a_new_database_is_at(tmp_path: Path) -> None:
    config = tmp_path / "mailer.toml"
    database = tmp_path / "m.db"
    config.write_text(f'[database]\nurl = "sqlite:///{database}"\n', encoding="utf-8")
    done = CliRunner().invoke(main, ["--config", str(config), "db", "upgrade"])
    head = done.output.strip().rpartition(" ")[2]
    assert head.startswith("0"), done.output
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    for shown in (CliRunner().invoke(main, ["init", "--help"]).output,
                  CliRunner().invoke(main, ["db", "upgrade", "--help"]).output, readme):
        assert f"is at revision {head}\n" in shown
