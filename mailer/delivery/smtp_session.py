"""One SMTP session: aiosmtplib connects, says EHLO, starts TLS and logs in; then a small reader of
our own matches every reply to its command in order, so that commands can be pipelined (RFC 2920)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from typing import Any, NamedTuple

import aiosmtplib

from mailer.config import SmtpConfig, StartTLS

# a reply line longer than this is not SMTP (RFC 5321 allows 512 octets)
MAX_REPLY_LINE = 64 * 1024


class Reply(NamedTuple):
    """One complete (possibly multi-line) SMTP reply; four a message, so a tuple, quick to make."""

    code: int
    text: str


class ReplyReader(asyncio.Protocol):
    """Parses replies as they arrive and hands each to the oldest command still waiting for one;
    a command whose reply will never come (the connection ended) gets None."""

    def __init__(self) -> None:
        # None stands for a reply nobody waits for (RSET, the "." after a refused transaction)
        self._waiting: deque[asyncio.Future[Reply | None] | None] = deque()
        self._buffer = bytearray()
        self._lines: list[str] = []
        self.closed = False
        self.lost = asyncio.Event()  # the connection is closed down to the socket

    def expect(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[Reply | None]:
        future: asyncio.Future[Reply | None] = loop.create_future()
        if self.closed:
            future.set_result(None)
        else:
            self._waiting.append(future)
        return future

    def expect_and_ignore(self) -> None:
        if not self.closed:
            self._waiting.append(None)

    def data_received(self, data: bytes) -> None:
        if not self._buffer and data.endswith(b"\n"):
            # the usual case: whole lines, a pipelined group's replies in one read
            for line in data[:-1].split(b"\n"):
                self._line(line.rstrip(b"\r"))
            return
        self._buffer += data
        while (end := self._buffer.find(b"\n")) >= 0:
            line = bytes(self._buffer[:end]).rstrip(b"\r")
            del self._buffer[:end + 1]
            self._line(line)
        if len(self._buffer) > MAX_REPLY_LINE:
            self.fail()

    def _line(self, line: bytes) -> None:
        self._lines.append(line[4:].decode("utf-8", "replace"))
        if line[3:4] == b"-":
            return  # more lines of the same reply follow
        text, self._lines = " ".join(self._lines), []
        if len(line) < 3 or not line[:3].isdigit():
            self.fail()
            return
        waiting = self._waiting.popleft() if self._waiting else None
        if waiting is not None and not waiting.done():
            waiting.set_result(Reply(int(line[:3]), text))

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail()
        self.lost.set()

    def fail(self) -> None:
        """Every command still waiting learns that its reply will never come."""
        self.closed = True
        while self._waiting:
            waiting = self._waiting.popleft()
            if waiting is not None and not waiting.done():
                waiting.set_result(None)


class Session:
    """A connected, greeted, secured and authenticated session whose replies `reader` matches."""

    def __init__(self, transport: asyncio.WriteTransport, reader: ReplyReader, extensions: set[str]) -> None:
        self.transport = transport
        self.reader = reader
        self.pipelining = "pipelining" in extensions
        self.smtputf8 = "smtputf8" in extensions
        self._loop = asyncio.get_running_loop()
        self._unwritten: list[bytes] = []  # written by callers in this turn of the loop, not yet sent

    @property
    def alive(self) -> bool:
        return not self.reader.closed and not self.transport.is_closing()

    def send(self, data: bytes, replies: int) -> list[asyncio.Future[Reply | None]]:
        """Write `data` (one or more commands, or a message) and wait for that many replies."""
        futures = [self.reader.expect(self._loop) for _ in range(replies)]
        self._write(data)
        return futures

    def send_and_ignore(self, data: bytes) -> None:
        """Write one command whose reply does not matter (RSET, or the "." of a refused transaction)."""
        self.reader.expect_and_ignore()
        self._write(data)

    def _write(self, data: bytes) -> None:
        if not self.pipelining:
            self.transport.write(data)  # lock step: each command waits for its reply anyway
            return
        if not self._unwritten:
            # a message's end and the next caller's commands go in one write (RFC 2920 3.1): that
            # caller runs in the loop's next turn, when its turn to write is handed on, so the
            # write waits a turn more; one system call and one segment a message fewer
            self._loop.call_soon(self._loop.call_soon, self._write_unwritten)
        self._unwritten.append(data)

    def _write_unwritten(self) -> None:
        unwritten, self._unwritten = self._unwritten, []
        if unwritten and not self.transport.is_closing():
            self.transport.write(b"".join(unwritten))

    def close(self) -> None:
        self._write_unwritten()  # what callers wrote goes before the end, as it would have unbuffered
        self.reader.fail()
        self.transport.close()

    async def quit(self, timeout: float) -> None:
        if self.alive:
            reply = self.send(b"QUIT\r\n", 1)[0]
            try:
                async with asyncio.timeout(timeout):
                    await reply
            except TimeoutError:
                pass
        self.close()
        # a TLS session closes with an exchange of its own; leaving before it ends leaks the socket
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.reader.lost.wait()


def tls_context(smtp: SmtpConfig) -> ssl.SSLContext | None:
    """What STARTTLS checks: nothing when opportunistic (RFC 7435), else the system's CAs and ca_file."""
    if smtp.starttls is StartTLS.OFF:
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if smtp.starttls is StartTLS.OPPORTUNISTIC:
        # encryption without authentication: a self-signed relay is still better than plain text
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif smtp.ca_file:
        context.load_verify_locations(cafile=smtp.ca_file)
    if smtp.client_cert:
        context.load_cert_chain(smtp.client_cert, smtp.client_key or None)
    return context


def start_tls_mode(smtp: SmtpConfig) -> bool | None:
    """aiosmtplib's start_tls: True demands it, None uses it when offered, False never."""
    if smtp.starttls is StartTLS.OFF:
        return False
    if smtp.starttls is StartTLS.OPPORTUNISTIC or smtp.is_loopback:
        return None
    return True


def client_options(smtp: SmtpConfig, context: ssl.SSLContext | None,
                   start_tls: bool | None = None) -> dict[str, Any]:
    """aiosmtplib.SMTP's keyword arguments for this relay: TLS, identity, credentials."""
    return {
        "hostname": smtp.host, "port": smtp.port, "timeout": smtp.timeout,
        "start_tls": start_tls_mode(smtp) if start_tls is None else start_tls, "tls_context": context,
        "local_hostname": smtp.helo_name or None,
        "username": smtp.username or None, "password": smtp.password or None,
    }


async def open_session(smtp: SmtpConfig, context: ssl.SSLContext | None, start_tls: bool | None) -> Session:
    """Connect, EHLO, STARTTLS (`start_tls` as aiosmtplib takes it) and AUTH; raises aiosmtplib's
    errors or OSError."""
    client = aiosmtplib.SMTP(**client_options(smtp, context, start_tls))
    try:
        await client.connect()
        if client.is_ehlo_or_helo_needed:
            await client.ehlo()
    except BaseException:
        client.close()
        raise
    transport = client.transport
    if not isinstance(transport, asyncio.WriteTransport) or transport.is_closing():
        client.close()
        raise aiosmtplib.SMTPServerDisconnected("the relay closed the connection")
    reader = ReplyReader()
    # from here on the replies are ours: aiosmtplib waits for one reply at a time
    transport.set_protocol(reader)
    return Session(transport, reader, set(client.esmtp_extensions))


def describe_failure(exc: BaseException) -> str:
    """One line on why a session could not be opened, naming the setting that fixes it."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return (f"the relay's TLS certificate could not be verified ({cause.verify_message}): "
                    "set smtp.ca_file to its CA or its own certificate")
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, aiosmtplib.SMTPTimeoutError | TimeoutError):
        return f"timed out: {exc}"
    return f"{type(exc).__name__}: {exc}"
