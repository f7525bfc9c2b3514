"""RFC 2920 pipelining against a real aiosmtpd that offers PIPELINING, and lock step against one that does not."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from relay_helpers import Relay, recording_proxy, relay
from sending_helpers import add_audience, configure, delivery_states, emails, make_campaign

from mailer.config import SmtpConfig, StartTLS
from mailer.db import Database
from mailer.delivery.pipeline import send_campaign_now
from mailer.delivery.smtp_session import Reply, ReplyReader
from mailer.delivery.transport import SendResult, SendStatus, SmtpTransport
from mailer.lifecycle import start_send
from mailer.models import DeliveryState

SENDER = "b-1-x@bounces.harmonymails.com"
# lines that start with a dot, a line that is only a dot, 8-bit bytes and a NUL-free binary run
TRICKY = (b"From: news@harmonymails.com\r\nTo: a@example.com\r\nSubject: dots\r\n"
          b"Content-Transfer-Encoding: 8bit\r\n\r\n"
          b".leading dot\r\n..two dots\r\n.\r\nol\xc3\xa1 \xff\xfe\x80\r\n\r\n.\r\nlast line\r\n")


def message(n: int) -> bytes:
    return (f"From: news@harmonymails.com\r\nTo: p{n}@example.com\r\nSubject: {n}\r\n\r\n".encode()
            + b"Hello\r\n.dot line\r\n")


@pytest.fixture(params=[True, False], ids=["pipelining", "lock-step"])
def any_relay(request: pytest.FixtureRequest) -> Iterator[Relay]:
    with relay(pipelining=request.param) as server:
        yield server


@pytest.fixture
def pipelining_relay() -> Iterator[Relay]:
    with relay(pipelining=True) as server:
        yield server


def smtp_for(server: Relay, port: int | None = None, **changes: object) -> SmtpConfig:
    settings: dict[str, object] = {"host": server.host, "port": port or server.port, "starttls": StartTLS.OFF,
                                   "timeout": 5, "connections": 1}
    settings.update(changes)
    return SmtpConfig(**settings)  # type: ignore[arg-type]


async def send_each(transport: SmtpTransport, recipients: list[str],
                    data: Callable[[int], bytes] = message) -> list[SendResult]:
    """All at once, as the pipeline's workers do; results in the order given."""
    try:
        return list(await asyncio.gather(*(transport.send(SENDER, r, data(i)) for i, r in enumerate(recipients))))
    finally:
        await transport.close()


def statuses(results: list[SendResult]) -> list[SendStatus]:
    return [r.status for r in results]


def test_messages_arrive_intact_and_in_full(any_relay: Relay) -> None:
    recipients = [f"p{i}@example.com" for i in range(40)]
    transport = SmtpTransport(smtp_for(any_relay, connections=2))
    results = asyncio.run(send_each(transport, recipients, lambda i: TRICKY if i % 2 else message(i)))
    assert statuses(results) == [SendStatus.SENT] * 40
    by_rcpt = {m.rcpt_tos[0]: m.data for m in any_relay.messages}
    assert sorted(by_rcpt) == sorted(recipients)  # each once, each with its own envelope
    for i, rcpt in enumerate(recipients):
        assert by_rcpt[rcpt] == (TRICKY if i % 2 else message(i))
    assert any_relay.handler.connections == 2


def test_bare_line_feeds_and_carriage_returns_arrive_as_crlf(pipelining_relay: Relay) -> None:
    data = b"Subject: endings\n\n.one\rtwo\r\nthree\nno final line break"
    results = asyncio.run(send_each(SmtpTransport(smtp_for(pipelining_relay)), ["a@example.com", "b@example.com"],
                                    lambda i: data))
    assert statuses(results) == [SendStatus.SENT] * 2
    expected = b"Subject: endings\r\n\r\n.one\r\ntwo\r\nthree\r\nno final line break\r\n"
    assert [m.data for m in pipelining_relay.messages] == [expected, expected]


def test_commands_are_grouped_only_when_the_relay_offers_pipelining(any_relay: Relay) -> None:
    async def run() -> list[bytes]:
        async with recording_proxy(any_relay.port) as proxy:
            transport = SmtpTransport(smtp_for(any_relay, port=proxy.port))
            results = await send_each(transport, [f"p{i}@example.com" for i in range(20)])
            assert statuses(results) == [SendStatus.SENT] * 20
            return proxy.chunks

    chunks = asyncio.run(run())
    grouped = [c for c in chunks if b"MAIL FROM:" in c and b"RCPT TO:" in c and c.endswith(b"DATA\r\n")]
    if any_relay.handler.pipelining:
        # MAIL, RCPT and DATA in one write, often right behind the previous message's final dot
        assert len(grouped) == 20
        assert any(c.startswith(b".dot line") or b"\r\n.\r\nMAIL FROM:" in c for c in grouped)
        assert len(chunks) <= 2 * 20 + 3  # EHLO, then at most two writes per message, QUIT
    else:
        assert grouped == []
        assert len(chunks) >= 4 * 20  # MAIL, RCPT, DATA, message: each waits for the reply before


def test_a_refused_recipient_inside_a_group_gets_no_body_and_the_others_go(pipelining_relay: Relay) -> None:
    pipelining_relay.faults.rcpt_replies.update({"gone@example.com": "550 5.1.1 no such user",
                                                 "busy@example.com": "450 4.2.1 busy"})
    recipients = ["a@example.com", "gone@example.com", "b@example.com", "busy@example.com", "c@example.com"]
    results = asyncio.run(send_each(SmtpTransport(smtp_for(pipelining_relay)), recipients))
    assert statuses(results) == [SendStatus.SENT, SendStatus.PERMANENT, SendStatus.SENT, SendStatus.TRANSIENT,
                                 SendStatus.SENT]
    assert results[1].hard_bounce and results[1].code == 550
    assert results[3].code == 450
    # each accepted message carries only its own recipient: the refused envelopes were reset
    assert sorted(m.rcpt_tos[0] for m in pipelining_relay.messages) == ["a@example.com", "b@example.com",
                                                                        "c@example.com"]
    assert all(len(m.rcpt_tos) == 1 for m in pipelining_relay.messages)
    assert pipelining_relay.handler.connections == 1


def test_421_inside_a_group_defers_that_message_only_and_reopens(pipelining_relay: Relay) -> None:
    pipelining_relay.faults.rcpt_replies["closing@example.com"] = "421 4.3.2 shutting down"
    recipients = ["a@example.com", "b@example.com", "closing@example.com", "c@example.com", "d@example.com"]
    results = asyncio.run(send_each(SmtpTransport(smtp_for(pipelining_relay)), recipients))
    assert statuses(results) == [SendStatus.SENT, SendStatus.SENT, SendStatus.TRANSIENT, SendStatus.SENT,
                                 SendStatus.SENT]
    assert results[2].code == 421 and results[2].connection_failed
    assert sorted(m.rcpt_tos[0] for m in pipelining_relay.messages) == ["a@example.com", "b@example.com",
                                                                        "c@example.com", "d@example.com"]
    assert pipelining_relay.handler.connections == 2  # the session the relay was closing was not used again


@pytest.mark.parametrize(("reply", "status", "hard"), [
    ("451 4.3.0 queue full, later", SendStatus.TRANSIENT, False),
    ("550 5.1.1 mailbox gone", SendStatus.PERMANENT, True),
    ("554 5.7.1 spam", SendStatus.PERMANENT, False),
])
def test_replies_after_the_dot_belong_to_their_own_message(pipelining_relay: Relay, reply: str,
                                                            status: SendStatus, hard: bool) -> None:
    pipelining_relay.handler.data_replies["x@example.com"] = reply
    recipients = ["a@example.com", "x@example.com", "b@example.com"]
    results = asyncio.run(send_each(SmtpTransport(smtp_for(pipelining_relay)), recipients))
    assert statuses(results) == [SendStatus.SENT, status, SendStatus.SENT]
    assert (results[1].code, results[1].hard_bounce) == (int(reply[:3]), hard)
    assert sorted(m.rcpt_tos[0] for m in pipelining_relay.messages) == ["a@example.com", "b@example.com"]
    assert pipelining_relay.handler.connections == 1


def test_a_drop_after_the_dot_defers_that_message_and_the_rest_go_on_a_new_session(pipelining_relay: Relay) -> None:
    pipelining_relay.handler.drop_after_dot.add("x@example.com")
    recipients = ["a@example.com", "x@example.com", "b@example.com", "c@example.com"]
    results = asyncio.run(send_each(SmtpTransport(smtp_for(pipelining_relay)), recipients))
    assert statuses(results) == [SendStatus.SENT, SendStatus.TRANSIENT, SendStatus.SENT, SendStatus.SENT]
    assert results[1].connection_failed
    assert sorted(m.rcpt_tos[0] for m in pipelining_relay.messages) == ["a@example.com", "b@example.com",
                                                                        "c@example.com"]
    assert pipelining_relay.handler.connections == 2


def test_a_stalled_relay_times_out_defers_and_the_next_message_goes_on_a_new_session(
    pipelining_relay: Relay,
) -> None:
    pipelining_relay.handler.stall_after_dot["slow@example.com"] = 3.0
    started = time.monotonic()
    results = asyncio.run(send_each(SmtpTransport(smtp_for(pipelining_relay, timeout=0.5)),
                                    ["slow@example.com", "b@example.com"]))
    assert statuses(results) == [SendStatus.TRANSIENT, SendStatus.SENT]
    assert "timed out" in results[0].response and results[0].connection_failed
    assert [m.rcpt_tos for m in pipelining_relay.messages] == [["b@example.com"]]
    assert pipelining_relay.handler.connections == 2
    assert time.monotonic() - started < 2.5  # not the relay's 3 s


def test_a_broken_relay_that_takes_data_after_a_refused_recipient_gets_no_body(pipelining_relay: Relay) -> None:
    # a relay that answers 354 to DATA although it refused the only recipient
    pipelining_relay.faults.rcpt_replies["gone@example.com"] = "550 5.1.1 no such user"

    async def run() -> list[SendResult]:
        transport = SmtpTransport(smtp_for(pipelining_relay))
        from aiosmtpd.smtp import SMTP

        original = SMTP.smtp_DATA

        async def lenient_data(self: SMTP, arg: str) -> None:
            if not self.envelope.rcpt_tos:
                self.envelope.rcpt_tos.append("nobody@example.com")
            await original(self, arg)

        SMTP.smtp_DATA = lenient_data
        try:
            return await send_each(transport, ["gone@example.com", "a@example.com"])
        finally:
            SMTP.smtp_DATA = original

    results = asyncio.run(run())
    assert statuses(results) == [SendStatus.PERMANENT, SendStatus.SENT]
    bodies = {m.rcpt_tos[0]: m.data for m in pipelining_relay.messages}
    assert bodies.get("nobody@example.com", b"") == b""  # only the final dot went
    assert bodies["a@example.com"] == message(1)



def test_a_campaign_through_a_pipelining_relay_records_each_message_by_its_own_reply(
    tmp_path: Path, database: Database, pipelining_relay: Relay,
) -> None:
    addresses = emails(120)
    gone, dropped, later = addresses[10], addresses[50], addresses[90]
    pipelining_relay.faults.rcpt_replies[gone] = "550 5.1.1 no such user"
    pipelining_relay.handler.drop_after_dot.add(dropped)
    pipelining_relay.handler.data_replies[later] = "451 4.3.0 try again later"
    campaign_id = make_campaign(database, add_audience(database, "news", addresses))
    config = configure(tmp_path, database, pipelining_relay, batch_size=20)
    start_send(config, database, campaign_id)
    report = send_campaign_now(config, database, campaign_id)

    assert (report.sent, report.deferred, report.failed, report.hard_bounces) == (117, 2, 1, 1)
    rows = delivery_states(database, campaign_id)
    assert rows[gone].state is DeliveryState.FAILED and rows[gone].last_code == 550
    assert rows[dropped].state is DeliveryState.DEFERRED
    assert rows[later].state is DeliveryState.DEFERRED and rows[later].last_code == 451
    counts = pipelining_relay.handler.rcpt_counts
    assert set(counts) == set(addresses) - {gone, dropped, later} and set(counts.values()) == {1}
    assert all(rows[a].state is DeliveryState.SENT for a in counts)



@pytest.mark.parametrize("size", [1, 3, 7, 1000], ids=lambda n: f"reads of {n} bytes")
def test_replies_are_matched_the_same_however_the_reads_cut_them(size: int) -> None:
    # a pipelined group's replies usually come in one read; TCP may cut them anywhere
    replies = b"250 2.1.0 Ok\r\n250-first line\r\n250 2.1.5 Ok\r\n354 End data\n550 5.1.1 No\r\n"

    async def read() -> list[Reply | None]:
        reader = ReplyReader()
        loop = asyncio.get_running_loop()
        waiting = [reader.expect(loop) for _ in range(5)]
        for start in range(0, len(replies), size):
            reader.data_received(replies[start:start + size])
        reader.connection_lost(None)  # the fifth command's reply never comes
        return [await reply for reply in waiting]

    assert asyncio.run(read()) == [Reply(250, "2.1.0 Ok"), Reply(250, "first line 2.1.5 Ok"),
                                   Reply(354, "End data"), Reply(550, "5.1.1 No"), None]
