"""The SMTP transport against a real aiosmtpd server on loopback that fails on request."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest
from smtp_faults import FaultyServer, faulty_smtp_server

from mailer.config import SmtpConfig, StartTLS
from mailer.delivery.transport import SendStatus, SmtpTransport, classify_reply, start_tls_mode

MESSAGE = b"From: news@harmonymails.com\r\nTo: a@example.com\r\nSubject: hi\r\n\r\nHello\r\n"


def smtp_for(smtp_server: FaultyServer, **changes: object) -> SmtpConfig:
    base = SmtpConfig(host=smtp_server.host, port=smtp_server.port, starttls=StartTLS.OFF, timeout=5, connections=2)
    return replace(base, **changes)  # type: ignore[arg-type]


def send_all(smtp: SmtpConfig, recipients: list[str]) -> list[SendStatus]:
    async def run() -> list[SendStatus]:
        transport = SmtpTransport(smtp)
        try:
            results = await asyncio.gather(
                *(transport.send("b-1-x@bounces.harmonymails.com", r, MESSAGE) for r in recipients)
            )
        finally:
            await transport.close()
        return [r.status for r in results]

    return asyncio.run(run())


def test_connections_are_reused_across_messages(smtp_server: FaultyServer) -> None:
    statuses = send_all(smtp_for(smtp_server, connections=3), [f"p{i}@example.com" for i in range(30)])
    assert statuses == [SendStatus.SENT] * 30
    assert len(smtp_server.messages) == 30
    assert smtp_server.handler.connections == 3  # not one per message


def test_recipient_replies_map_to_outcomes(smtp_server: FaultyServer) -> None:
    smtp_server.faults.rcpt_replies.update({
        "busy@example.com": "451 4.3.0 try again later",
        "full@example.com": "452 4.2.2 mailbox full",
        "gone@example.com": "550 5.1.1 <gone@example.com>: no such user",
        "spam@example.com": "554 5.7.1 rejected by policy",
    })

    async def run() -> dict[str, object]:
        transport = SmtpTransport(smtp_for(smtp_server, connections=1))
        out = {}
        for rcpt in ["busy@example.com", "full@example.com", "gone@example.com", "spam@example.com",
                     "ok@example.com"]:
            out[rcpt] = await transport.send("b@bounces.harmonymails.com", rcpt, MESSAGE)
        await transport.close()
        return out

    results = asyncio.run(run())
    busy, full, gone, spam, ok = results.values()
    assert (busy.status, busy.code) == (SendStatus.TRANSIENT, 451)  # type: ignore[attr-defined]
    assert (full.status, full.code) == (SendStatus.TRANSIENT, 452)  # type: ignore[attr-defined]
    assert (gone.status, gone.hard_bounce) == (SendStatus.PERMANENT, True)  # type: ignore[attr-defined]
    assert (spam.status, spam.hard_bounce) == (SendStatus.PERMANENT, False)  # type: ignore[attr-defined]
    assert ok.status is SendStatus.SENT  # type: ignore[attr-defined]
    # refusals reset the envelope: the one good message carried only its own recipient
    assert [m.rcpt_tos for m in smtp_server.messages] == [["ok@example.com"]]
    assert smtp_server.handler.connections == 1


@pytest.mark.parametrize(("code", "text", "status", "hard"), [
    (250, "2.0.0 OK", SendStatus.SENT, False),
    (421, "4.3.2 closing", SendStatus.TRANSIENT, False),
    (450, "mailbox busy", SendStatus.TRANSIENT, False),
    (552, "5.3.4 too many recipients", SendStatus.TRANSIENT, False),
    (550, "5.1.1 user unknown", SendStatus.PERMANENT, True),
    (551, "5.1.6 moved", SendStatus.PERMANENT, True),
    (553, "5.1.3 bad address syntax", SendStatus.PERMANENT, True),
    (550, "mailbox unavailable", SendStatus.PERMANENT, False),
    (554, "5.7.1 spam", SendStatus.PERMANENT, False),
])
def test_classify_reply(code: int, text: str, status: SendStatus, hard: bool) -> None:
    result = classify_reply(code, text)
    assert (result.status, result.hard_bounce) == (status, hard)


def test_421_on_connect_is_not_sent_and_the_next_message_reconnects(smtp_server: FaultyServer) -> None:
    smtp_server.faults.refuse_connections = 1
    statuses = send_all(smtp_for(smtp_server, connections=1), ["a@example.com", "b@example.com"])
    assert statuses == [SendStatus.NOT_SENT, SendStatus.SENT]
    assert [m.rcpt_tos for m in smtp_server.messages] == [["b@example.com"]]


def test_drop_in_the_middle_of_data_is_transient_and_the_connection_reopens(smtp_server: FaultyServer) -> None:
    smtp_server.faults.drop_data = 1
    statuses = send_all(smtp_for(smtp_server, connections=1), ["a@example.com", "b@example.com", "c@example.com"])
    assert statuses == [SendStatus.TRANSIENT, SendStatus.SENT, SendStatus.SENT]
    assert [m.rcpt_tos for m in smtp_server.messages] == [["b@example.com"], ["c@example.com"]]
    assert smtp_server.handler.connections == 2


def test_a_stalled_relay_times_out_as_transient(smtp_server: FaultyServer) -> None:
    smtp_server.faults.stall_data_seconds = 3

    async def run() -> object:
        transport = SmtpTransport(smtp_for(smtp_server, connections=1, timeout=0.5))
        try:
            return await transport.send("b@bounces.harmonymails.com", "a@example.com", MESSAGE)
        finally:
            await transport.close()

    started = time.monotonic()
    result = asyncio.run(run())
    assert result.status is SendStatus.TRANSIENT  # type: ignore[attr-defined]
    assert result.connection_failed  # type: ignore[attr-defined]
    assert "timed out" in result.response  # type: ignore[attr-defined]
    assert time.monotonic() - started < 2.5


def test_an_idle_connection_the_relay_closed_is_reopened_without_losing_the_message(
    smtp_server: FaultyServer,
) -> None:
    async def run() -> list[SendStatus]:
        transport = SmtpTransport(smtp_for(smtp_server, connections=1))
        first = await transport.send("b@bounces.harmonymails.com", "a@example.com", MESSAGE)
        # the relay hangs up on the idle session (as relays do after their idle timeout)
        session = transport.connections[0].session
        assert session is not None
        session.transport.close()
        await asyncio.sleep(0.1)
        second = await transport.send("b@bounces.harmonymails.com", "b@example.com", MESSAGE)
        await transport.close()
        return [first.status, second.status]

    assert asyncio.run(run()) == [SendStatus.SENT, SendStatus.SENT]
    assert len(smtp_server.messages) == 2


def test_messages_per_second_caps_the_rate_across_connections(smtp_server: FaultyServer) -> None:
    started = time.monotonic()
    statuses = send_all(smtp_for(smtp_server, connections=4, messages_per_second=20),
                        [f"p{i}@example.com" for i in range(11)])
    elapsed = time.monotonic() - started
    assert statuses == [SendStatus.SENT] * 11
    assert elapsed >= 0.5  # 11 messages at 20/s: the first goes at once, the last 0.5 s later


def test_starttls_is_required_except_on_loopback_or_when_configured_otherwise() -> None:
    remote = SmtpConfig(host="smtp.example.net", starttls=StartTLS.REQUIRED)
    assert start_tls_mode(remote) is True
    assert start_tls_mode(replace(remote, starttls=StartTLS.OPPORTUNISTIC)) is None
    assert start_tls_mode(replace(remote, starttls=StartTLS.OFF)) is False
    assert start_tls_mode(replace(remote, host="127.0.0.1")) is None
    assert start_tls_mode(replace(remote, host="localhost")) is None


def test_required_starttls_refuses_a_relay_without_it(smtp_server: FaultyServer) -> None:
    async def run() -> object:
        transport = SmtpTransport(smtp_for(smtp_server, starttls=StartTLS.REQUIRED, connections=1))
        # what a remote relay gets: the loopback exception does not apply
        transport.connections[0].start_tls = True
        try:
            return await transport.send("b@bounces.harmonymails.com", "a@example.com", MESSAGE)
        finally:
            await transport.close()

    result = asyncio.run(run())
    assert result.status is SendStatus.NOT_SENT  # type: ignore[attr-defined]
    assert "STARTTLS" in result.response  # type: ignore[attr-defined]
    assert smtp_server.messages == []  # nothing went out in the clear


def test_non_ascii_addresses_need_smtputf8(smtp_server: FaultyServer) -> None:
    statuses = send_all(smtp_for(smtp_server, connections=1), ["josé@example.com", "ana@example.com"])
    assert statuses == [SendStatus.PERMANENT, SendStatus.SENT]  # refused here, and the next one goes
    with faulty_smtp_server(smtputf8=True) as utf8_server:
        assert send_all(smtp_for(utf8_server, connections=1), ["josé@example.com"]) == [SendStatus.SENT]
        assert utf8_server.messages[0].rcpt_tos == ["josé@example.com"]


def test_an_address_that_would_break_the_command_line_never_reaches_the_relay(smtp_server: FaultyServer) -> None:
    statuses = send_all(smtp_for(smtp_server, connections=1),
                        ["evil@example.com>\r\nRCPT TO:<other@example.com", "ok@example.com"])
    assert statuses == [SendStatus.PERMANENT, SendStatus.SENT]
    assert [m.rcpt_tos for m in smtp_server.messages] == [["ok@example.com"]]
