"""Renders a campaign's messages in helper processes, so the sending loop keeps its core for SMTP."""

from __future__ import annotations

import asyncio
import collections
import itertools
import multiprocessing
import pickle
import signal
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import NamedTuple

from mailer.config import Config
from mailer.content.compose import CampaignContent, Composer, Outgoing, Recipient, RenderedMessage
from mailer.errors import MailerError

# below this many messages a helper process costs more to start than it saves
MIN_MESSAGES_FOR_HELPER = 2000
# job bytes a helper may hold unanswered. The sender writes jobs while the helper writes
# answers; were the sender to write more than the socket holds while the helper is itself
# blocked on an answer the sender has not read, each would wait for the other for ever. Well
# under any socket buffer, and about ten jobs ahead, which keeps a helper busy.
MAX_UNANSWERED_BYTES = 32 * 1024
# the job number of a helper's first word: its composer is built, it takes jobs from now on
_READY = -1


class HelperGone(MailerError):
    """A render helper exited (killed by hand?); the sender renders in its own process instead."""


def _helper_main(connection: Connection, config: Config, content: CampaignContent) -> None:
    """The helper: build the campaign's Composer once, then render chunk after chunk until EOF.

    It is given the campaign's content, and imports nothing of the database: started with
    `spawn`, it is up in about a third of a second, not a second."""
    # the parent decides when the helper stops: Ctrl-C or systemd's SIGTERM reach the whole
    # process group, and the parent drains its messages in flight before it closes the pipe.
    # If the parent dies outright, the pipe closes and recv_bytes() ends the loop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        composer = Composer.for_content(config, content)
    except MailerError:
        return  # as it failed for the sender, which built it first, renders itself and says why
    try:
        connection.send_bytes(pickle.dumps((_READY, []), pickle.HIGHEST_PROTOCOL))
    except OSError:
        return
    while True:
        try:
            job, recipients = pickle.loads(connection.recv_bytes())
        except (EOFError, OSError):
            return
        rendered: list[Outgoing | str] = []
        for recipient in recipients:
            try:
                rendered.append(composer.render(recipient).outgoing)
            except MailerError as exc:
                rendered.append(str(exc) or type(exc).__name__)
        try:
            connection.send_bytes(pickle.dumps((job, rendered), pickle.HIGHEST_PROTOCOL))
        except OSError:
            return  # the sender has gone (killed, or stopped before this answer): so do we


def _retrieve(future: asyncio.Future[list[Outgoing | str]]) -> None:
    if not future.cancelled():
        future.exception()


class _Helper:
    """One helper process and the jobs it has not answered yet."""

    def __init__(self, config: Config, content: CampaignContent) -> None:
        # spawn, not fork: the parent holds database connections and an event loop
        context = multiprocessing.get_context("spawn")
        self.connection, child_end = context.Pipe()
        self.process = context.Process(target=_helper_main, args=(child_end, config, content),
                                       name="mailer-render", daemon=True)
        self.process.start()
        child_end.close()
        self.waiting: dict[int, asyncio.Future[list[Outgoing | str]]] = {}
        self.queued: collections.deque[tuple[int, bytes]] = collections.deque()  # not written yet
        self.unanswered: dict[int, int] = {}  # job written to the helper -> its size in bytes
        self.reading = False
        self.ready = False  # the helper has said its composer is built; nothing is written before


class _Job(NamedTuple):
    helper: _Helper
    number: int


class RenderAhead:
    """A Renderer that renders claimed messages ahead, in `processes` helper processes.

    `submit()` starts rendering a chunk and returns its future; `render()` renders in this
    process, which the pipeline does while the helpers start, or after one has died. Jobs wait
    here until their helper is up (a second or so, importing and compiling); `taken()` says a
    recipient of a job was rendered here meanwhile, and a job all of whose recipients were is
    dropped unwritten, so that a helper never starts on a backlog already sent.
    """

    def __init__(self, composer: Composer, config: Config, processes: int = 1) -> None:
        self.composer = composer
        self.helpers = [_Helper(config, composer.content) for _ in range(max(1, processes))]
        self._next_helper = itertools.cycle(self.helpers)
        self._jobs = itertools.count()
        self.warm = False  # set once a helper is up
        # each job not yet answered: its helper and number, and how many of its recipients are
        # still to be had from it
        self._open: dict[asyncio.Future[list[Outgoing | str]], tuple[_Job, int]] = {}

    def render(self, recipient: Recipient) -> RenderedMessage:
        return self.composer.render(recipient)

    def submit(self, recipients: Sequence[Recipient]) -> asyncio.Future[list[Outgoing | str]]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Outgoing | str]] = loop.create_future()
        # a job whose messages were released unsent is never awaited: take its exception anyway
        future.add_done_callback(_retrieve)
        helper = next(self._next_helper)
        if helper.connection.closed:
            future.set_exception(HelperGone("the render helper has exited"))
            return future
        job = next(self._jobs)
        helper.waiting[job] = future
        helper.queued.append((job, pickle.dumps((job, list(recipients)), pickle.HIGHEST_PROTOCOL)))
        self._open[future] = (_Job(helper, job), len(recipients))
        future.add_done_callback(self._closed)
        if not helper.reading:
            # the answers are read by the event loop itself: no threads, no locks
            loop.add_reader(helper.connection.fileno(), self._receive, helper)
            helper.reading = True
        self._write_queued(helper)
        return future

    def taken(self, future: asyncio.Future[list[Outgoing | str]]) -> None:
        """One recipient of the job behind `future` was rendered in this process; once all of them
        were, a job not yet written to its helper is dropped (its future cancelled)."""
        entry = self._open.get(future)
        if entry is None:
            return
        job, wanted = entry
        if wanted > 1:
            self._open[future] = (job, wanted - 1)
            return
        queued = job.helper.queued
        for place, (number, _) in enumerate(queued):
            if number == job.number:
                del queued[place]
                del job.helper.waiting[number]
                future.cancel()
                return

    def _closed(self, future: asyncio.Future[list[Outgoing | str]]) -> None:
        self._open.pop(future, None)

    def _write_queued(self, helper: _Helper) -> None:
        # one job always goes when none is unanswered (the helper is then waiting to read it all)
        while helper.ready and helper.queued:
            job, payload = helper.queued[0]
            if helper.unanswered and sum(helper.unanswered.values()) + len(payload) > MAX_UNANSWERED_BYTES:
                return
            try:
                helper.connection.send_bytes(payload)
            except OSError:
                self._helper_gone(helper)
                return
            helper.queued.popleft()
            helper.unanswered[job] = len(payload)

    def _receive(self, helper: _Helper) -> None:
        try:
            job, rendered = pickle.loads(helper.connection.recv_bytes())
        except (EOFError, OSError):
            self._helper_gone(helper)
            return
        if job == _READY:
            helper.ready = self.warm = True
            self._write_queued(helper)
            return
        helper.unanswered.pop(job, None)
        answered = helper.waiting.pop(job, None)
        if answered is not None and not answered.done():
            answered.set_result(rendered)
        self._write_queued(helper)

    def _helper_gone(self, helper: _Helper) -> None:
        self._stop_reading(helper)
        for future in helper.waiting.values():
            if not future.done():
                future.set_exception(HelperGone("the render helper has exited"))
        helper.waiting.clear()
        helper.queued.clear()
        helper.unanswered.clear()
        helper.connection.close()

    def _stop_reading(self, helper: _Helper) -> None:
        if helper.reading:
            asyncio.get_running_loop().remove_reader(helper.connection.fileno())
            helper.reading = False

    def close(self) -> None:
        """Close the pipes (each helper sees EOF and exits) and wait for the helpers."""
        for helper in self.helpers:
            if helper.reading:
                self._stop_reading(helper)
            for future in helper.waiting.values():
                if not future.done():
                    future.cancel()
            helper.queued.clear()
            if not helper.connection.closed:
                helper.connection.close()
        for helper in self.helpers:
            helper.process.join(timeout=5)
            if helper.process.is_alive():
                helper.process.kill()
                helper.process.join()

