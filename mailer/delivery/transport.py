"""SMTP delivery: persistent connections shared by many messages, pipelined when the relay allows it,
under one rate cap."""

from __future__ import annotations

import asyncio
import enum
import ssl
from dataclasses import dataclass

import aiosmtplib

from mailer.bounce_class import BounceClass, classify
from mailer.config import SmtpConfig
from mailer.content.wire import smtp_wire
from mailer.delivery.smtp_session import (
    Reply,
    Session,
    describe_failure,
    open_session,
)

# what a test send or a confirmation mail uses to reach the relay as the campaigns do
from mailer.delivery.smtp_session import client_options as client_options
from mailer.delivery.smtp_session import start_tls_mode as start_tls_mode
from mailer.delivery.smtp_session import tls_context as tls_context


class SendStatus(enum.StrEnum):
    """What the relay did with one message."""

    SENT = "sent"  # accepted (2xx)
    TRANSIENT = "transient"  # 4xx, 552, timeout or dropped connection: try again later
    PERMANENT = "permanent"  # 5xx: never try again
    NOT_SENT = "not_sent"  # no connection could be opened; nothing reached the relay


@dataclass(frozen=True)
class SendResult:
    """The relay's answer to one message."""

    status: SendStatus
    code: int | None = None
    response: str = ""
    hard_bounce: bool = False  # 5.1.x, 5.2.1, 5.4.4: the mailbox or domain does not exist
    policy_block: bool = False  # 5.7.x or a blocklist's words: refused because of the sender, not the address
    connection_failed: bool = False  # the relay itself failed (counts toward pausing the campaign)


def classify_reply(code: int, text: str) -> SendResult:
    """Map one SMTP reply to an outcome (COMPLIANCE 27 and 30, RFC 3463; see mailer.bounce_class)."""
    response = f"{code} {text}".strip()
    if 200 <= code < 300:
        return SendResult(SendStatus.SENT, code, response)
    # 552 was "too many recipients" before RFC 5321 made that 452; both mean "not now"
    if 400 <= code < 500 or code == 552:
        return SendResult(SendStatus.TRANSIENT, code, response, connection_failed=code == 421)
    # permanent is not "suppress": a 550 5.7.1 blocklisting says nothing about the mailbox
    refusal = classify(code, text=text)
    return SendResult(SendStatus.PERMANENT, code, response, hard_bounce=refusal.suppresses,
                      policy_block=refusal is BounceClass.POLICY_BLOCK)


class RateLimiter:
    """Spaces messages evenly so that all connections together stay under `per_second`."""

    def __init__(self, per_second: float) -> None:
        self.interval = 1.0 / per_second if per_second > 0 else 0.0
        self._next = 0.0

    async def wait(self) -> None:
        if not self.interval:
            return
        now = asyncio.get_running_loop().time()
        slot = max(now, self._next)
        self._next = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


# the replies that let a transaction go on: to MAIL, to RCPT, to DATA
_ACCEPTED: tuple[tuple[int, ...], ...] = ((250,), (250, 251), (354,))
# concurrent send() callers per connection: one waiting for its message's reply, one whose commands
# follow that message on the wire, one ready behind them
CALLERS_PER_CONNECTION = 3


class SmtpConnection:
    """One SMTP session, opened on first use and again after the relay drops it.

    Callers take turns writing. When the relay offers PIPELINING (RFC 2920) a turn is MAIL, RCPT and
    DATA in one write, then the message once DATA is accepted; the next caller's commands follow at
    once while the message still waits for its reply, so each message costs about one round trip.
    Without PIPELINING a turn is the whole transaction in lock step."""

    def __init__(self, smtp: SmtpConfig, context: ssl.SSLContext | None) -> None:
        self.config = smtp
        self.context = context
        self.start_tls = start_tls_mode(smtp)
        self.session: Session | None = None
        self.load = 0  # callers inside send()
        self._turn = asyncio.Lock()

    async def send(self, envelope_from: str, recipient: str, wire: bytes) -> SendResult:
        """One mail transaction for a message in its wire form (see smtp_wire); never raises for
        anything the relay or the network does."""
        bad = next((a for a in (envelope_from, recipient) if not _is_envelope_address(a)), None)
        if bad is not None:
            return SendResult(SendStatus.PERMANENT, None, f"not an address SMTP can carry: {bad!r}")
        self.load += 1
        try:
            for attempt in range(2):
                result = await self._transaction(envelope_from, recipient, wire, retry=attempt == 0)
                if result is not None:
                    return result
        finally:
            self.load -= 1
        raise AssertionError("unreachable")  # pragma: no cover

    async def _transaction(self, sender: str, recipient: str, wire: bytes, retry: bool) -> SendResult | None:
        """The outcome, or None when the session ended before anything reached the relay."""
        await self._turn.acquire()
        holding = True
        try:
            started = await self._start(sender, recipient, wire, retry)
            if not isinstance(started, tuple):
                return started
            session, end = started
            if session.pipelining:
                self._turn.release()  # the next caller's commands may follow the message now
                holding = False
            return await self._finish(session, end)
        finally:
            if holding:
                self._turn.release()

    async def _start(self, sender: str, recipient: str, wire: bytes,
                     retry: bool) -> SendResult | tuple[Session, asyncio.Future[Reply | None]] | None:
        session = await self._open()
        if isinstance(session, SendResult):
            return session
        utf8 = not (sender.isascii() and recipient.isascii())
        if utf8 and not session.smtputf8:
            return SendResult(SendStatus.PERMANENT, None,
                              "the relay does not offer SMTPUTF8, needed for this non-ASCII address")
        try:
            replies = await self._envelope(session, _commands(sender, recipient, utf8))
        except TimeoutError:
            # perhaps a message ahead of this one stalled the session; nothing of this one was sent
            self._drop(session)
            return None if retry else SendResult(SendStatus.TRANSIENT, None, self._timed_out(),
                                                 connection_failed=True)
        except BaseException:
            # cancelled halfway: the relay may be waiting for a message that will never come
            self._drop(session)
            raise
        for accepted, reply in zip(_ACCEPTED, replies, strict=False):
            if reply is None:
                # the relay hung up before the message: nothing was sent, a new session may take it
                self._drop(session)
                return None if retry else SendResult(SendStatus.NOT_SENT, None, "the relay closed the connection",
                                                     connection_failed=True)
            if reply.code not in accepted:
                return self._refused(session, reply, replies)
        return session, session.send(wire, 1)[0]

    async def _envelope(self, session: Session, commands: list[bytes]) -> list[Reply | None]:
        """MAIL, RCPT and DATA in one write when pipelining, else one by one until one is refused."""
        async with asyncio.timeout(self.config.timeout):
            if session.pipelining:
                return [await reply for reply in session.send(b"".join(commands), len(commands))]
            replies: list[Reply | None] = []
            for command, accepted in zip(commands, _ACCEPTED, strict=True):
                reply = await session.send(command, 1)[0]
                replies.append(reply)
                if reply is None or reply.code not in accepted:
                    break
            return replies

    def _refused(self, session: Session, reply: Reply, replies: list[Reply | None]) -> SendResult:
        result = classify_reply(reply.code, reply.text)
        if reply.code == 421 or not session.alive:
            self._drop(session)  # the relay is closing this session
        elif len(replies) == 3 and replies[2] is not None and replies[2].code == 354:
            # DATA accepted after a refused envelope (a broken relay): end it empty, send no body
            session.send_and_ignore(b".\r\n")
        else:
            session.send_and_ignore(b"RSET\r\n")
        return result

    async def _finish(self, session: Session, end: asyncio.Future[Reply | None]) -> SendResult:
        try:
            async with asyncio.timeout(self.config.timeout):
                reply = await end
        except TimeoutError:
            self._drop(session)
            return SendResult(SendStatus.TRANSIENT, None, self._timed_out(), connection_failed=True)
        if reply is None:
            # dropped after the message went: the relay did not confirm, so it is retried later
            self._drop(session)
            return SendResult(SendStatus.TRANSIENT, None, "the relay closed the connection before accepting "
                              "the message", connection_failed=True)
        if reply.code == 421:
            self._drop(session)
        return classify_reply(reply.code, reply.text)

    async def _open(self) -> Session | SendResult:
        if self.session is not None and self.session.alive:
            return self.session
        self.session = None
        try:
            self.session = await open_session(self.config, self.context, self.start_tls)
        except aiosmtplib.SMTPResponseException as exc:  # e.g. 421 or 554 on connect
            return SendResult(SendStatus.NOT_SENT, exc.code, f"{exc.code} {exc.message}", connection_failed=True)
        except (aiosmtplib.SMTPException, OSError) as exc:
            return SendResult(SendStatus.NOT_SENT, None, describe_failure(exc), connection_failed=True)
        return self.session

    def _timed_out(self) -> str:
        return f"timed out: no reply from the relay within {self.config.timeout:g} s"

    def _drop(self, session: Session) -> None:
        session.close()
        if self.session is session:
            self.session = None

    async def quit(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            await session.quit(min(self.config.timeout, 5.0))

def _is_envelope_address(address: str) -> bool:
    # addresses come validated from the database and from VERP, but nothing that could break
    # the command line ever reaches the relay
    # (a tab, CR, LF or NUL is not printable)
    return "@" in address and "<" not in address and ">" not in address and " " not in address \
        and address.isprintable()


def _commands(sender: str, recipient: str, utf8: bool) -> list[bytes]:
    # built from addresses validated above, never re-parsed: that parsing was a tenth of the CPU
    option = b" SMTPUTF8" if utf8 else b""
    return [b"MAIL FROM:<" + sender.encode("utf-8") + b">" + option + b"\r\n",
            b"RCPT TO:<" + recipient.encode("utf-8") + b">\r\n",
            b"DATA\r\n"]

class SmtpTransport:
    """`smtp.connections` persistent connections; any number of senders share them."""

    def __init__(self, smtp: SmtpConfig) -> None:
        context = tls_context(smtp)
        self.connections = [SmtpConnection(smtp, context) for _ in range(smtp.connections)]
        self._rate = RateLimiter(smtp.messages_per_second)

    @property
    def concurrency(self) -> int:
        """Concurrent send() callers that keep every connection busy."""
        return CALLERS_PER_CONNECTION * len(self.connections)

    async def send(self, envelope_from: str, recipient: str, data: bytes) -> SendResult:
        """Send one message on the least busy connection, within the rate cap."""
        return await self.send_wire(envelope_from, recipient, smtp_wire(data))

    async def send_wire(self, envelope_from: str, recipient: str, wire: bytes) -> SendResult:
        """send() for a message already in its wire form (RenderedMessage.wire): no pass over it here."""
        await self._rate.wait()
        connection = min(self.connections, key=lambda c: c.load)
        return await connection.send(envelope_from, recipient, wire)

    async def close(self) -> None:
        """QUIT every open connection."""
        await asyncio.gather(*(c.quit() for c in self.connections))
