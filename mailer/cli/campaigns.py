"""`mailer campaign ...`: the group every campaign command hangs from."""

from __future__ import annotations

from mailer.cli import main


@main.group("campaign")
def campaign_group() -> None:
    """Campaigns: write, check, send and follow them.

    \b
    Example:
      $ mailer campaign ls
      $ mailer campaign send 1
    """
