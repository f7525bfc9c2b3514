"""Renders a campaign's messages in a helper process, so the sending loop keeps its core for SMTP."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

from mailer.compose import Composer, Recipient, RenderedMessage
from mailer.config import Config
from mailer.errors import MailerError

# below this many messages a helper process costs more to start than it saves
MIN_MESSAGES_FOR_HELPER = 2000

_composer: Composer | None = None  # the helper process's own, built once by _start_helper


def _start_helper(config: Config, campaign_id: int) -> None:
    # the parent decides when the helper stops: Ctrl-C or systemd's SIGTERM reach the whole
    # process group, and the parent drains its messages in flight before it shuts us down
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # ... and if the parent is killed outright (kill -9), the helper must not outlive it
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    from mailer.db import Database
    from mailer.lifecycle import get_campaign

    global _composer
    database = Database(config.database.url)
    try:
        with database.session() as session:
            campaign = get_campaign(session, campaign_id)
            _composer = Composer(config, campaign, campaign.mailing_list)
    finally:
        database.dispose()


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.2)
    os._exit(0)


def _render_chunk(recipients: Sequence[Recipient]) -> list[RenderedMessage | str]:
    """In the helper: each message, or the reason it could not be rendered."""
    assert _composer is not None, "helper process not started"
    rendered: list[RenderedMessage | str] = []
    for recipient in recipients:
        try:
            rendered.append(_composer.render(recipient))
        except MailerError as exc:
            rendered.append(str(exc) or type(exc).__name__)
    return rendered


class RenderAhead:
    """A Renderer that renders claimed messages ahead, in `processes` helper processes.

    `submit()` starts rendering a chunk and returns its future; `render()` renders in this
    process, which the pipeline does while the helpers start, or if one dies.
    """

    def __init__(self, composer: Composer, config: Config, campaign_id: int, processes: int = 1) -> None:
        self.composer = composer
        # spawn, not fork: the parent holds database connections and an event loop
        self._pool = ProcessPoolExecutor(
            max_workers=processes, mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_helper, initargs=(config, campaign_id),
        )
        self.warm = False  # set once the helpers have rendered a chunk

    def render(self, recipient: Recipient) -> RenderedMessage:
        return self.composer.render(recipient)

    def submit(self, recipients: Sequence[Recipient]) -> asyncio.Future[list[RenderedMessage | str]]:
        future = asyncio.wrap_future(self._pool.submit(_render_chunk, list(recipients)))
        future.add_done_callback(self._mark_warm)
        return future

    def _mark_warm(self, future: asyncio.Future[list[RenderedMessage | str]]) -> None:
        if not future.cancelled() and future.exception() is None:
            self.warm = True

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
