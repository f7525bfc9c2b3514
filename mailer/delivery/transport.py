"""SMTP delivery: persistent aiosmtplib connections shared by many messages, under one rate cap."""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass

import aiosmtplib

from mailer.bounce_class import BounceClass, classify
from mailer.config import SmtpConfig, StartTLS


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


def start_tls_mode(smtp: SmtpConfig) -> bool | None:
    """aiosmtplib's start_tls: True demands it, None uses it when offered, False never."""
    if smtp.starttls is StartTLS.OFF:
        return False
    if smtp.starttls is StartTLS.OPPORTUNISTIC or smtp.is_loopback:
        return None
    return True


class SmtpConnection:
    """One SMTP session, opened on first use and again after the relay drops it."""

    def __init__(self, smtp: SmtpConfig, local_hostname: str | None = None) -> None:
        self.config = smtp
        self.local_hostname = local_hostname
        self.start_tls = start_tls_mode(smtp)
        self._client: aiosmtplib.SMTP | None = None

    async def _open(self) -> aiosmtplib.SMTP:
        if self._client is not None and self._client.is_connected:
            return self._client
        cfg = self.config
        client = aiosmtplib.SMTP(
            hostname=cfg.host, port=cfg.port, timeout=cfg.timeout, start_tls=self.start_tls,
            local_hostname=self.local_hostname,
            username=cfg.username or None, password=cfg.password or None,
        )
        await client.connect()
        if client.is_ehlo_or_helo_needed:
            await client.ehlo()
        self._client = client
        return client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def quit(self) -> None:
        client, self._client = self._client, None
        if client is not None and client.is_connected:
            try:
                await client.quit()
            except (aiosmtplib.SMTPException, OSError):
                client.close()

    async def send(self, envelope_from: str, recipient: str, data: bytes) -> SendResult:
        """One mail transaction; never raises for anything the relay or the network does."""
        bad = next((a for a in (envelope_from, recipient) if not _is_envelope_address(a)), None)
        if bad is not None:
            return SendResult(SendStatus.PERMANENT, None, f"not an address SMTP can carry: {bad!r}")
        for attempt in range(2):
            try:
                client = await self._open()
            except aiosmtplib.SMTPResponseException as exc:  # e.g. 421 or 554 on connect
                self.close()
                return SendResult(SendStatus.NOT_SENT, exc.code, f"{exc.code} {exc.message}",
                                  connection_failed=True)
            except (aiosmtplib.SMTPException, OSError) as exc:
                self.close()
                return SendResult(SendStatus.NOT_SENT, None, _describe(exc), connection_failed=True)
            utf8 = not (envelope_from.isascii() and recipient.isascii())
            if utf8 and not client.supports_extension("smtputf8"):
                return SendResult(SendStatus.PERMANENT, None,
                                  "the relay does not offer SMTPUTF8, needed for this non-ASCII address")
            try:
                await _mail(client, envelope_from, utf8)
            except aiosmtplib.SMTPServerDisconnected:
                # an idle connection the relay has since closed: nothing was sent, so open a new one
                self.close()
                if attempt == 0:
                    continue
                return SendResult(SendStatus.NOT_SENT, None, "the relay closed the connection",
                                  connection_failed=True)
            except aiosmtplib.SMTPResponseException as exc:
                return await self._refused(client, exc)
            except (aiosmtplib.SMTPException, OSError) as exc:
                self.close()
                return SendResult(SendStatus.TRANSIENT, None, _describe(exc), connection_failed=True)
            return await self._finish(client, recipient, data)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _finish(self, client: aiosmtplib.SMTP, recipient: str, data: bytes) -> SendResult:
        try:
            await _rcpt(client, recipient)
            response = await client.data(data)
        except aiosmtplib.SMTPResponseException as exc:
            return await self._refused(client, exc)
        except (aiosmtplib.SMTPException, OSError) as exc:
            # dropped or stalled mid-transaction: the relay did not confirm, so it is retried later
            self.close()
            return SendResult(SendStatus.TRANSIENT, None, _describe(exc), connection_failed=True)
        return SendResult(SendStatus.SENT, response.code, f"{response.code} {response.message}")

    async def _refused(self, client: aiosmtplib.SMTP, exc: aiosmtplib.SMTPResponseException) -> SendResult:
        result = classify_reply(exc.code, exc.message)
        if exc.code == 421:
            self.close()  # the relay is closing this session
            return result
        try:
            await client.rset()
        except (aiosmtplib.SMTPException, OSError):
            self.close()
        return result


def _is_envelope_address(address: str) -> bool:
    # addresses come validated from the database and from VERP, but nothing that could break
    # the command line ever reaches the relay
    return "@" in address and not any(ch in address for ch in "<> \t\r\n\x00") and address.isprintable()


# MAIL and RCPT as aiosmtplib sends them, without re-parsing an address we built or validated:
# that parsing was a tenth of the sender's CPU time per message
async def _mail(client: aiosmtplib.SMTP, sender: str, utf8: bool) -> None:
    options = (b"SMTPUTF8",) if utf8 else ()
    response = await client.execute_command(b"MAIL", b"FROM:<" + sender.encode("utf-8") + b">", *options)
    if response.code != 250:
        raise aiosmtplib.SMTPSenderRefused(response.code, response.message, sender)


async def _rcpt(client: aiosmtplib.SMTP, recipient: str) -> None:
    response = await client.execute_command(b"RCPT", b"TO:<" + recipient.encode("utf-8") + b">")
    if response.code not in (250, 251):
        raise aiosmtplib.SMTPRecipientRefused(response.code, response.message, recipient)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiosmtplib.SMTPTimeoutError | TimeoutError):
        return f"timed out: {exc}"
    return f"{type(exc).__name__}: {exc}"


class SmtpTransport:
    """`smtp.connections` persistent connections; any number of senders share them."""

    def __init__(self, smtp: SmtpConfig, local_hostname: str | None = None) -> None:
        self.connections = [SmtpConnection(smtp, local_hostname) for _ in range(smtp.connections)]
        self._idle: asyncio.Queue[SmtpConnection] = asyncio.Queue()
        for connection in self.connections:
            self._idle.put_nowait(connection)
        self._rate = RateLimiter(smtp.messages_per_second)

    @property
    def concurrency(self) -> int:
        return len(self.connections)

    async def send(self, envelope_from: str, recipient: str, data: bytes) -> SendResult:
        """Send one message on the next free connection; waits for the rate cap and a free connection."""
        connection = await self._idle.get()
        try:
            await self._rate.wait()
            return await connection.send(envelope_from, recipient, data)
        finally:
            self._idle.put_nowait(connection)

    async def close(self) -> None:
        """QUIT every open connection."""
        await asyncio.gather(*(c.quit() for c in self.connections))
