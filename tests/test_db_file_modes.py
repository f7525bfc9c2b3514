"""Database files hold subscribers' addresses: only the mailer's user may read them, whatever the umask."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

# a second program with the database open: it reads in WAL mode and keeps its read transaction,
# so the -wal and -shm files exist and are made by a process with a permissive umask
HOLDER = """
import os, sqlite3, sys
os.umask(0)
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA journal_mode=WAL")
conn.execute("BEGIN")
conn.execute("SELECT count(*) FROM sqlite_master").fetchall()
print("ready", flush=True)
sys.stdin.readline()
conn.close()
"""


def run_mailer(cwd: Path, *args: str, umask: int = 0o022) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MAILER_CONFIG"}

    def set_umask() -> None:
        os.umask(umask)

    return subprocess.run(
        [sys.executable, "-m", "mailer", *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=120, preexec_fn=set_umask, check=False,
    )


def modes(directory: Path, name: str) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in directory.glob(name + "*")}


def hold_open(path: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def release(proc: subprocess.Popen[str]) -> None:
    proc.communicate("\n", timeout=30)


def test_init_creates_a_private_database_and_its_wal_files_stay_private(tmp_path: Path) -> None:
    result = run_mailer(tmp_path, "init", umask=0o000)
    assert result.returncode == 0, result.stderr
    assert modes(tmp_path, "mailer.db") == {"mailer.db": 0o600}
    other = hold_open(tmp_path / "mailer.db")
    try:
        result = run_mailer(tmp_path, "list", "create", "news", umask=0o000)
        assert result.returncode == 0, result.stderr
        found = modes(tmp_path, "mailer.db")
        assert {"mailer.db", "mailer.db-wal", "mailer.db-shm"} <= set(found)
        assert set(found.values()) == {0o600}, found
    finally:
        release(other)
    assert set(modes(tmp_path, "mailer.db").values()) == {0o600}
    assert stat.S_IMODE((tmp_path / "mailer.toml").stat().st_mode) == 0o600


def test_db_upgrade_creates_a_private_database_in_a_new_folder(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/data/mail.db"
    (tmp_path / "mailer.toml").write_text(
        f'[database]\nurl = "{url}"\n[unsubscribe]\nsecret_keys = ["0123456789abcdef0123"]\n', encoding="utf-8"
    )
    result = run_mailer(tmp_path, "db", "upgrade")
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr
    assert modes(tmp_path / "data", "mail.db") == {"mail.db": 0o600}


def test_any_first_connection_creates_the_file_private(tmp_path: Path) -> None:
    (tmp_path / "mailer.toml").write_text(
        '[unsubscribe]\nsecret_keys = ["0123456789abcdef0123"]\n', encoding="utf-8"
    )
    result = run_mailer(tmp_path, "list", "ls", umask=0o000)
    assert result.returncode == 1
    assert "not initialized" in result.stderr
    assert set(modes(tmp_path, "mailer.db").values()) == {0o600}


def test_an_older_database_readable_by_others_is_reported_not_changed(tmp_path: Path) -> None:
    assert run_mailer(tmp_path, "init").returncode == 0
    database = tmp_path / "mailer.db"
    database.chmod(0o644)
    result = run_mailer(tmp_path, "db", "upgrade")
    assert result.returncode == 0, result.stderr
    assert "other users may open it (mode 0644); `chmod 600 mailer.db`" in result.stderr
    assert stat.S_IMODE(database.stat().st_mode) == 0o644
