"""An LMTP listener for an MTA: each message handled as `inbound process` does, answered per recipient."""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import sqlalchemy as sa
from aiosmtpd.lmtp import LMTP

from mailer.config import Config
from mailer.db import Database
from mailer.inbound.classify import InboundKind
from mailer.inbound.process import InboundItem, process_raw_message
from mailer.inbound.sources import MAX_MESSAGE_BYTES, RawMessage

# messages handled at once in each worker process, while others wait on the database server;
# SQLite takes one writer at a time, and threads colliding in its busy handler sleep up to 100 ms
THREADS = 4
THREADS_ON_SQLITE = 1
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# seconds SIGTERM waits for messages being handled, so none is left half acted on
_DRAIN_SECONDS = 30.0
# an MTA that goes quiet mid-session is dropped after this long, as Postfix's own server would
_IDLE_SECONDS = 300.0
# the database cannot take the message now; the MTA keeps it in its queue and tries again
TEMPORARY_FAILURE = "451 4.3.0 the database is unavailable, try again later"
# aiosmtpd's own refusals at the end of DATA, each sent once for the whole message
_REFUSED_AFTER_DATA = ("552 ", "500 Line too long")


def reply_for(item: InboundItem) -> str:
    """The LMTP reply for one recipient of a handled message."""
    if item.kind is InboundKind.FAILED:
        # as `inbound process -` exits 65: no later try can read it, so the MTA returns it
        return f"554 5.6.0 {_one_line(item.note)}"
    return f"250 2.0.0 {item.kind.value}: {_one_line(item.note)}"


def _one_line(text: str) -> str:
    return "".join(ch if " " <= ch <= "~" else "?" for ch in " ".join(text.split()))[:400]


class InboundLMTP(LMTP):
    """aiosmtpd's LMTP with room for the long lines bounces quote from HTML mail."""

    # the reader's buffer per connection; the message itself is bounded by data_size_limit
    line_length_limit = 1024 * 1024

    async def push(self, status: str | bytes) -> None:
        # aiosmtpd refuses an oversized message or line with one reply where LMTP wants one per
        # recipient: an MTA waiting for the others would time out and send it again for ever
        text = status.decode("ascii", "replace") if isinstance(status, bytes) else status
        recipients = self.envelope.rcpt_tos if self.envelope is not None else []
        if text.startswith(_REFUSED_AFTER_DATA) and len(recipients) > 1:
            text = "\r\n".join([text] * len(recipients))
        await super().push(text)


class InboundHandler:
    """aiosmtpd's handler: each message goes through process_raw_message in a worker thread."""

    def __init__(self, database: Database, config: Config, executor: ThreadPoolExecutor,
                 report: Callable[[InboundItem], None]) -> None:
        self.database = database
        self.config = config
        self.executor = executor
        self.report = report
        self.in_flight = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        """One reply line per accepted recipient, as LMTP asks (RFC 2033 4.2)."""
        message = RawMessage(f"LMTP from <{envelope.mail_from}>", bytes(envelope.original_content))
        self.in_flight += 1
        try:
            item = await asyncio.get_running_loop().run_in_executor(
                self.executor, process_raw_message, self.database, self.config, message)
        except (sa.exc.OperationalError, sa.exc.InterfaceError):
            # the message is fine and the database is not: the MTA keeps it and tries again
            reply = TEMPORARY_FAILURE
        else:
            self.report(item)
            reply = reply_for(item)
        finally:
            self.in_flight -= 1
        return "\r\n".join([reply] * len(envelope.rcpt_tos))


def serve_lmtp(database: Database, config: Config, host: str, port: int, workers: int,
               on_ready: Callable[[str], None], report: Callable[[InboundItem], None]) -> bool:
    """Listen on host:port until SIGTERM or SIGINT, then finish the messages being handled.

    With more than one worker, as many processes share the listening socket: parsing and
    classifying a message is Python work that one process does on one core only. True when
    stopped by a signal, False when a worker process died. Raises OSError when the address
    cannot be listened on.
    """
    config.require_secret_keys()
    listener = socket.create_server((host, port), family=_family(host), backlog=1024)
    try:
        bound = listener.getsockname()
        if workers == 1:
            on_ready(f"{bound[0]}:{bound[1]}")
            _run_worker(database, config, listener, report)
            return True
        # the children open connections of their own: none may be shared across fork
        database.dispose()
        return _run_workers(workers, database, config, listener, on_ready, report)
    finally:
        listener.close()


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _run_workers(workers: int, database: Database, config: Config, listener: socket.socket,
                 on_ready: Callable[[str], None], report: Callable[[InboundItem], None]) -> bool:
    stop = threading.Event()
    previous = {signum: signal.signal(signum, lambda *_args: stop.set()) for signum in _STOP_SIGNALS}
    forked = multiprocessing.get_context("fork")
    children = [forked.Process(target=_run_worker, args=(database, config, listener, report))
                for _ in range(workers)]
    try:
        for child in children:
            child.start()
        bound = listener.getsockname()
        on_ready(f"{bound[0]}:{bound[1]}")
        while not stop.is_set() and all(child.is_alive() for child in children):
            multiprocessing.connection.wait([child.sentinel for child in children], timeout=0.5)
        return stop.is_set()
    finally:
        for child in children:
            if child.pid is not None and child.is_alive():
                os.kill(child.pid, signal.SIGTERM)
        for child in children:
            if child.pid is not None:
                child.join(_DRAIN_SECONDS + 5)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _run_worker(database: Database, config: Config, listener: socket.socket,
                report: Callable[[InboundItem], None]) -> None:
    # a forked worker must not inherit its parent's way of stopping: its own is set up below
    for signum in _STOP_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    threads = THREADS_ON_SQLITE if database.is_sqlite else THREADS
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="lmtp") as executor:
        handler = InboundHandler(database, config, executor, report)
        asyncio.run(_serve(handler, listener))
    database.dispose()


async def _serve(handler: InboundHandler, listener: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    hostname = socket.getfqdn()  # once: it may ask DNS
    server = await loop.create_server(
        lambda: InboundLMTP(handler, data_size_limit=MAX_MESSAGE_BYTES, enable_SMTPUTF8=True,
                            decode_data=False, hostname=hostname, ident="mailer LMTP",
                            timeout=_IDLE_SECONDS, loop=loop),
        sock=listener)
    stop = asyncio.Event()
    for signum in _STOP_SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        server.close()  # no new connections; the MTA's next try goes to the next start
        for _ in range(int(_DRAIN_SECONDS * 10)):
            if handler.in_flight == 0:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.1)  # the last replies are written after their handler returns
        for signum in _STOP_SIGNALS:
            loop.remove_signal_handler(signum)
