"""An LMTP listener for an MTA: each message handled as `inbound process` does, answered per recipient."""

from __future__ import annotations

import asyncio
import signal
import socket
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

# messages handled at once: the database does the waiting, and SQLite takes one writer anyway
WORKERS = 4
# seconds SIGTERM waits for messages being handled, so none is left half acted on
_DRAIN_SECONDS = 30.0
# an MTA that goes quiet mid-session is dropped after this long, as Postfix's own server would
_IDLE_SECONDS = 300.0
# the database cannot take the message now; the MTA keeps it in its queue and tries again
TEMPORARY_FAILURE = "451 4.3.0 the database is unavailable, try again later"


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
        except sa.exc.OperationalError:
            reply = TEMPORARY_FAILURE
        else:
            self.report(item)
            reply = reply_for(item)
        finally:
            self.in_flight -= 1
        return "\r\n".join([reply] * len(envelope.rcpt_tos))


def serve_lmtp(database: Database, config: Config, host: str, port: int,
               on_ready: Callable[[str], None], report: Callable[[InboundItem], None]) -> None:
    """Listen on host:port until SIGTERM or SIGINT, then finish the messages being handled.

    Raises OSError when the address cannot be listened on.
    """
    config.require_secret_keys()
    with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="lmtp") as executor:
        handler = InboundHandler(database, config, executor, report)
        asyncio.run(_serve(handler, host, port, on_ready))


async def _serve(handler: InboundHandler, host: str, port: int, on_ready: Callable[[str], None]) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: InboundLMTP(handler, data_size_limit=MAX_MESSAGE_BYTES, enable_SMTPUTF8=True,
                            decode_data=False, hostname=socket.getfqdn(), ident="mailer LMTP",
                            timeout=_IDLE_SECONDS, loop=loop),
        host, port, reuse_address=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    bound = server.sockets[0].getsockname()
    on_ready(f"{bound[0]}:{bound[1]}")
    try:
        await stop.wait()
    finally:
        server.close()  # no new connections; the MTA's next try goes to the next start
        for _ in range(int(_DRAIN_SECONDS * 10)):
            if handler.in_flight == 0:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.1)  # the last replies are written after their handler returns
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
