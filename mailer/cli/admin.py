"""`mailer init` and `mailer db upgrade`: create the config and bring the database to head."""

from __future__ import annotations

import secrets
from pathlib import Path

import click

from mailer.cli import main
from mailer.cli.context import AppContext, pass_app, public_url
from mailer.config import DEFAULT_CONFIG_NAME
from mailer.db import Database, shared_sqlite_files, sqlite_path

INITIAL_CONFIG = """\
# harmony-mailer configuration; every key is documented in config.example.toml.
[database]
url = "sqlite:///mailer.db"

[unsubscribe]
# signs unsubscribe links; the first key signs, every key verifies (add new keys in front)
secret_keys = ["{key}"]
"""


@main.command()
@pass_app
def init(app: AppContext) -> None:
    """Create mailer.toml (if absent) with a fresh signing key, and the database.

    \b
    Example:
      $ mailer init
      wrote mailer.toml
      database sqlite:///mailer.db is at revision 0011_pending_by_id
    """
    target = Path(app.config_path) if app.config_path else Path(DEFAULT_CONFIG_NAME)
    if not target.exists():
        target.write_text(INITIAL_CONFIG.format(key=secrets.token_urlsafe(32)), encoding="utf-8")
        target.chmod(0o600)  # it holds the signing key
        click.echo(f"wrote {target}")
        app.config_path = str(target)
    else:
        click.echo(f"kept existing {target}")
        app.config_path = str(target)
    _upgrade(app)


@main.group()
def db() -> None:
    """Database maintenance.

    \b
    Example:
      $ mailer db upgrade
    """


@db.command("upgrade")
@pass_app
def db_upgrade(app: AppContext) -> None:
    """Run the migrations up to the newest revision.

    \b
    Example:
      $ mailer db upgrade
      database sqlite:///mailer.db is at revision 0011_pending_by_id
    """
    _upgrade(app)


def _upgrade(app: AppContext) -> None:
    database: Database = app.open_db_for_upgrade()
    path = sqlite_path(database.url)
    if path is not None and path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    database.upgrade()
    click.echo(f"database {public_url(database.url)} is at revision {database.current_revision()}")
    database.dispose()
    _warn_shared_files(database.url)


def _warn_shared_files(url: str) -> None:
    # new files are created private; an older one is only reported, since its owner may share it
    # with a group on purpose (a web server's user, a backup job)
    for path in shared_sqlite_files(url):
        mode = path.stat().st_mode & 0o777
        click.echo(f"warning: {path} holds subscribers' data and other users may open it (mode {mode:04o}); "
                   f"`chmod 600 {path}` keeps it private", err=True)

