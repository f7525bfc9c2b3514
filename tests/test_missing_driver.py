"""A PostgreSQL URL without the postgres extra installed: one line naming the module and the fix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import write_config

FIX = "pip install 'harmony-mailer[postgres]'"


def run_without_psycopg(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # a module that fails to import exactly as an absent one does, first on the path
    shadow = tmp_path / "shadow"
    shadow.mkdir(exist_ok=True)
    (shadow / "psycopg.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'psycopg'\", name='psycopg')\n", encoding="utf-8")
    config = write_config(tmp_path / "mailer.toml", "postgresql+psycopg://mailer:s3cret@127.0.0.1:5432/mail")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shadow), *sys.path])}
    return subprocess.run([sys.executable, "-m", "mailer", "--config", str(config), *args],
                          capture_output=True, text=True, env=env, timeout=60, check=False)


@pytest.mark.parametrize("command", [["db", "upgrade"], ["list", "ls"], ["send-due"], ["serve"]])
def test_a_missing_postgres_driver_is_one_line_with_the_fix(tmp_path: Path, command: list[str]) -> None:
    result = run_without_psycopg(tmp_path, *command)

    assert result.returncode == 1  # as for any other configuration error
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "psycopg" in lines[0] and FIX in lines[0]
    assert "s3cret" not in lines[0]


def test_an_invalid_config_exits_with_the_same_status(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[database]\nurl = "sqlite:///x.db"\n[sending]\nrate = "fast"\n', encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "mailer", "--config", str(config), "list", "ls"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == run_without_psycopg(tmp_path, "list", "ls").returncode
