"""Command-line text that is not UTF-8 is refused before any command runs; file paths are not text."""

from __future__ import annotations

import click

from mailer.errors import check_unicode


def takes_path(param: click.Parameter) -> bool:
    """A file name may be any bytes; an option that takes a name or a path says PATH in its metavar."""
    return isinstance(param.type, click.Path) or "PATH" in (param.metavar or "")


def check_text_params(ctx: click.Context) -> None:
    """Raises InvalidInputError for the first parsed text value that held bytes not UTF-8.

    Python hands such bytes over as lone surrogates, which no database, JSON or message can
    encode; refusing them here gives one line instead of a traceback halfway through a command.
    """
    for param in ctx.command.params:
        if param.name is None or takes_path(param):
            continue
        value = ctx.params.get(param.name)
        label = param.opts[0] if isinstance(param, click.Option) else param.human_readable_name
        for item in value if isinstance(value, tuple | list) else (value,):
            if isinstance(item, str):
                check_unicode(label, item)


class TextCheckedCommand(click.Command):
    """A command whose text options and arguments are valid UTF-8 by the time it runs."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        rest = super().parse_args(ctx, args)
        check_text_params(ctx)
        return rest


class TextCheckedGroup(click.Group):
    """A command group whose own text and whose commands' text are checked the same way."""

    command_class = TextCheckedCommand
    group_class = type  # subgroups are checked groups too

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        rest = super().parse_args(ctx, args)
        check_text_params(ctx)
        return rest
