"""What every command shares: the loaded config, the database, and how output is printed."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar

import click

from mailer.cli.terminal import json_terminal_safe
from mailer.config import Config, load_config
from mailer.config import public_url as public_url  # commands import it from here
from mailer.errors import MailerError

if TYPE_CHECKING:
    from mailer.db import Database

F = TypeVar("F", bound=Callable[..., Any])


class AppContext:
    """Loads the config and opens the database only when a command first needs them."""

    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path

    @cached_property
    def config(self) -> Config:
        return load_config(self.config_path)

    @cached_property
    def db(self) -> Database:
        database = self.open_db_for_upgrade()
        if database.current_revision() is None:
            raise MailerError(
                f"the database at {public_url(self.config.database.url)} is not initialized; "
                "run `mailer init` (or `mailer db upgrade`)"
            )
        return database

    def open_db_for_upgrade(self) -> Database:
        # SQLAlchemy loads here, when a command first touches the database, not for --help
        from mailer.db import Database

        return Database.from_config(self.config)

    def close(self) -> None:
        """Release database connections when the command ends."""
        database = self.__dict__.pop("db", None)
        if database is not None:
            database.dispose()


pass_app = click.make_pass_decorator(AppContext)


def json_option(func: F) -> F:
    """Adds --json: print data as JSON for scripts instead of text for people."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")(func)


def echo_json(data: Any) -> None:
    click.echo(json_terminal_safe(json.dumps(data, indent=2, ensure_ascii=False, default=str)))
