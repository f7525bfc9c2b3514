"""A non-editable install works from any directory: templates and migrations ship in the wheel."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out), str(ROOT)],
        check=True, capture_output=True,
    )
    return next(out.glob("harmony_mailer-*.whl"))


def test_wheel_holds_templates_and_migrations(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "mailer/migrations/env.py" in names
    assert "mailer/migrations/script.py.mako" in names
    assert any(n.startswith("mailer/migrations/versions/0001") for n in names)
    assert any(n.startswith("mailer/templates/") and n.endswith(".j2") for n in names)
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)


def test_installed_package_runs_from_another_directory(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(wheel)],
        check=True, capture_output=True,
    )
    work = tmp_path / "elsewhere"
    work.mkdir()
    (work / "people.csv").write_text("email,name\nana@example.com,Ana\n", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(target)}
    env.pop("MAILER_CONFIG", None)

    def mailer(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "mailer", *args], cwd=work, env=env,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout

    where = subprocess.run([sys.executable, "-c", "import mailer; print(mailer.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(target)), "the test must exercise the installed copy"
    assert "is at revision" in mailer("init")
    mailer("list", "create", "news")
    assert "added                 1" in mailer("subscriber", "import", "people.csv", "--list", "news")
    assert (work / "mailer.db").exists()
