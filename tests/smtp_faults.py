"""A real aiosmtpd server on loopback that records what it accepts and misbehaves on request."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP
from serve_helpers import free_port


@dataclass
class Faults:
    """What the server does wrong; tests change these while it runs."""

    refuse_connections: int = 0  # answer this many next connections with 421 and hang up
    refuse_all_connections: bool = False  # the relay is down: every connection gets 421
    rcpt_replies: dict[str, str] = field(default_factory=dict)  # address -> reply, e.g. "550 5.1.1 ..."
    drop_data: int = 0  # hang up in the middle of DATA this many next times
    stall_data_seconds: float = 0.0  # sleep this long before answering the end of DATA
    data_reply: str = ""  # answer the end of DATA with this instead of accepting, e.g. "554 5.7.1 ..."


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes


class FaultyHandler:
    """Records accepted messages; RCPT replies come from `faults.rcpt_replies`."""

    def __init__(self) -> None:
        self.faults = Faults()
        self.messages: list[Received] = []
        self.connections = 0
        self.lock = threading.Lock()
        self.on_message: Any = None  # called with each accepted Received, in the server's thread

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        reply = self.faults.rcpt_replies.get(address.lower())
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.faults.stall_data_seconds:
            await asyncio.sleep(self.faults.stall_data_seconds)
            return "451 4.4.2 too slow"  # the client has long given up
        if self.faults.data_reply:
            return self.faults.data_reply
        received = Received(envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.original_content))
        with self.lock:
            self.messages.append(received)
        if self.on_message is not None:
            self.on_message(received)
        return "250 2.0.0 OK: queued"

    @property
    def rcpt_counts(self) -> Counter[str]:
        with self.lock:
            return Counter(addr.lower() for m in self.messages for addr in m.rcpt_tos)


class FaultySMTP(SMTP):  # type: ignore[misc]
    """aiosmtpd's SMTP session with the failures a real relay shows now and then."""

    async def _handle_client(self) -> None:
        handler: FaultyHandler = self.event_handler
        faults = handler.faults
        with handler.lock:
            handler.connections += 1
            refuse = faults.refuse_all_connections or faults.refuse_connections > 0
            if faults.refuse_connections > 0:
                faults.refuse_connections -= 1
        if refuse:
            await self.push("421 4.3.2 Service not available, closing transmission channel")
            self.transport.close()
            return
        await super()._handle_client()

    async def smtp_DATA(self, arg: str) -> None:
        faults: Faults = self.event_handler.faults
        if faults.drop_data > 0 and self.envelope.rcpt_tos:
            faults.drop_data -= 1
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            await self._reader.read(10)  # take a little of the message, then vanish
            self.transport.close()
            return
        await super().smtp_DATA(arg)


class FaultyController(Controller):  # type: ignore[misc]
    def factory(self) -> SMTP:
        return FaultySMTP(self.handler, **self.SMTP_kwargs)


@dataclass
class FaultyServer:
    host: str
    port: int
    handler: FaultyHandler

    @property
    def faults(self) -> Faults:
        return self.handler.faults

    @property
    def messages(self) -> list[Received]:
        return self.handler.messages


@contextmanager
def faulty_smtp_server(smtputf8: bool = False) -> Iterator[FaultyServer]:
    """Start the server on a free loopback port; stop it on exit."""
    handler = FaultyHandler()
    # aiosmtpd's start() connects to the port it was given to check the server is up, so port 0
    # cannot be used; a port the kernel just handed out is free in practice
    port = free_port()
    controller = FaultyController(handler, hostname="127.0.0.1", port=port, enable_SMTPUTF8=smtputf8)
    controller.start()
    handler.connections = 0  # start()'s own check is not a client
    try:
        yield FaultyServer("127.0.0.1", port, handler)
    finally:
        controller.stop()
