"""The CLI run in-process, and the mailer.toml it reads: for tests that drive the mailer as a user does."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner, Result
from smtp_faults import FaultyServer

from mailer.cli import main

TEST_SECRET_KEY = "test-signing-key-0123456789abcdef"


def write_config(path: Path, db_url: str, smtp: FaultyServer | None = None, extra: str = "") -> Path:
    """A mailer.toml for tests: the given database, a signing key, the loopback SMTP server."""
    smtp_part = ""
    if smtp is not None:
        smtp_part = f'[smtp]\nhost = "{smtp.host}"\nport = {smtp.port}\nstarttls = "off"\ntimeout = 5\n'
    path.write_text(
        f'[database]\nurl = "{db_url}"\n\n'
        f'[unsubscribe]\nsecret_keys = ["{TEST_SECRET_KEY}"]\n\n'
        f"{smtp_part}{extra}",
        encoding="utf-8",
    )
    return path


class Cli:
    """Runs `mailer --config PATH ...` in-process with click's CliRunner."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.runner = CliRunner()

    def __call__(self, *args: str, input: str | None = None, ok: bool = True) -> Result:
        result = self.runner.invoke(
            main, ["--config", str(self.config_path), *args], input=input, catch_exceptions=False
        )
        if ok and result.exit_code != 0:
            raise AssertionError(
                f"mailer {' '.join(args)} exited {result.exit_code}:\n{result.output}{result.stderr}"
            )
        return result
