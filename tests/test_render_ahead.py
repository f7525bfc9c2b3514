"""Render-ahead helper processes: they render what the sender would, and never outlive it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import psutil
import pytest
from sending_helpers import (
    add_audience,
    configure,
    emails,
    make_campaign,
    sending_config,
    state_counts,
)
from smtp_faults import FaultyServer, Received

from mailer.config import Config
from mailer.content.compliance import message_parts, parse_message
from mailer.content.compose import Composer, Outgoing, Recipient
from mailer.db import Database
from mailer.delivery.pipeline import CampaignSender
from mailer.delivery.render_ahead import RenderAhead
from mailer.errors import MailerError
from mailer.lifecycle import get_campaign, start_send
from mailer.models import DeliveryState


def _started_send(
    tmp_path: Path, database: Database, smtp_server: FaultyServer, *, audience: int
) -> tuple[Config, Composer]:
    """A campaign to `audience` addresses, its send started, and its composer."""
    list_id = add_audience(database, "news", emails(audience))
    campaign_id = make_campaign(database, list_id)
    config = configure(tmp_path, database, smtp_server)
    start_send(config, database, campaign_id)
    with database.session() as session:
        campaign = get_campaign(session, campaign_id)
        composer = Composer(config, campaign, campaign.mailing_list)
    return config, composer


def _people(ids: Iterable[int]) -> list[Recipient]:
    return [Recipient(delivery_id=i, subscriber_id=i, email=f"p{i}@example.com", name=f"Person {i}",
                      attributes={}, subscribed_at=None) for i in ids]


def test_the_render_helper_renders_what_the_composer_renders(
    tmp_path: Path, database: Database, smtp_server: FaultyServer
) -> None:
    config, composer = _started_send(tmp_path, database, smtp_server, audience=2)
    people = _people((1, 2))

    async def render_in_helper() -> list[object]:
        helper = RenderAhead(composer, config)
        try:
            return list(await helper.submit(people))
        finally:
            helper.close()

    for ahead, person in zip(asyncio.run(render_in_helper()), people, strict=True):
        here = composer.render(person)
        assert isinstance(ahead, Outgoing)
        assert (ahead.envelope_from, ahead.recipient) == (here.envelope_from, here.recipient)
        theirs, ours = parse_message(unstuffed(ahead.wire)), parse_message(here.data)
        assert theirs["Message-ID"] == here.message_id
        assert message_parts(theirs) == message_parts(ours)
        for header in ("From", "To", "Subject", "List-Unsubscribe", "List-Id"):
            assert theirs[header] == ours[header]


def unstuffed(wire: bytes) -> bytes:
    """The message a wire form carries: without the final dot line, leading dots single again."""
    assert wire.endswith(b"\r\n.\r\n")
    return wire[:-3].replace(b"\r\n..", b"\r\n.")


def test_a_render_helper_starts_without_the_database_layer() -> None:
    # a helper is spawned: a fresh interpreter imports what it runs, and SQLAlchemy with the
    # models is two thirds of a second of that, during which the sender renders alone. The
    # `mailer` script (the spawned helper's main module) and the helper's own modules need none of it.
    found = subprocess.run(
        [sys.executable, "-c", "import sys, mailer.cli, mailer.delivery.render_ahead; "
         "print(sorted(m for m in sys.modules if m.split('.')[0] == 'sqlalchemy' or m == 'mailer.models'))"],
        capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "[]"


def test_a_job_rendered_here_while_the_helper_starts_is_never_sent_to_it(
    tmp_path: Path, database: Database, smtp_server: FaultyServer
) -> None:
    # the sender renders for itself while a helper imports and compiles; a helper that then
    # rendered that backlog again would hold up every message queued behind it
    config, composer = _started_send(tmp_path, database, smtp_server, audience=1)
    people = _people(range(1, 8))

    async def take_while_starting() -> tuple[bool, list[Outgoing | str], list[Outgoing | str], int]:
        ahead = RenderAhead(composer, config)
        try:
            done_here = ahead.submit(people[:3])
            later = ahead.submit(people[3:5])
            partly = ahead.submit(people[5:])
            assert not ahead.warm  # the helper cannot have said it is up: the loop has not run
            for _ in people[:3]:
                ahead.taken(done_here)
            ahead.taken(partly)  # one of two: the other still needs the helper
            answers = await later, await partly
            return done_here.cancelled(), *answers, len(ahead.helpers[0].waiting)
        finally:
            ahead.close()

    dropped, later, partly, waiting = asyncio.run(take_while_starting())
    assert dropped and waiting == 0
    assert [m.recipient for m in later + partly if isinstance(m, Outgoing)] == [
        "p4@example.com", "p5@example.com", "p6@example.com", "p7@example.com"]


def test_a_render_helper_whose_sender_has_gone_exits_quietly(
    tmp_path: Path, database: Database, smtp_server: FaultyServer, capfd: pytest.CaptureFixture[str]
) -> None:
    # a sender killed, or stopped while a job was being rendered: the helper's answer has no
    # reader any more, and that must not put a traceback on the operator's terminal or cron mail
    config, composer = _started_send(tmp_path, database, smtp_server, audience=1)
    people = _people(range(300))

    async def close_while_rendering() -> int | None:
        ahead = RenderAhead(composer, config)
        await ahead.submit(people[:1])  # the helper is up
        ahead.submit(people)  # long enough to render that the sender is gone before the answer
        ahead.close()
        return ahead.helpers[0].process.exitcode

    assert asyncio.run(close_while_rendering()) == 0
    assert "Traceback" not in capfd.readouterr().err


def test_a_send_goes_on_when_its_render_helper_dies(
    tmp_path: Path, database: Database, smtp_server: FaultyServer
) -> None:
    list_id = add_audience(database, "news", emails(300))
    campaign_id = make_campaign(database, list_id)
    config = configure(tmp_path, database, smtp_server, batch_size=20)
    start_send(config, database, campaign_id)

    async def run() -> None:
        async with CampaignSender(config, database) as sender:
            composer = sender.prepare(campaign_id)
            helper = RenderAhead(composer, config)  # type: ignore[arg-type]

            def kill_the_helper(received: Received) -> None:
                if len(smtp_server.messages) == 100:
                    helper.helpers[0].process.kill()

            smtp_server.handler.on_message = kill_the_helper
            await sender.send(campaign_id, helper)

    asyncio.run(run())
    received = smtp_server.handler.rcpt_counts
    assert len(received) == 300 and set(received.values()) == {1}
    assert state_counts(database, campaign_id) == {DeliveryState.SENT: 300}


def test_a_render_that_fails_is_reported_for_that_recipient_alone(
    tmp_path: Path, database: Database, smtp_server: FaultyServer
) -> None:
    list_id = add_audience(database, "news", emails(1))
    campaign_id = make_campaign(database, list_id)
    config = configure(tmp_path, database, smtp_server)
    with database.session() as session:
        campaign = get_campaign(session, campaign_id)
        campaign.html_template = "<p>Your tier: {{ subscriber.attributes.tier }}</p>"
    with database.session() as session:
        campaign = get_campaign(session, campaign_id)
        composer = Composer(config, campaign, campaign.mailing_list)
    gold = Recipient(delivery_id=1, subscriber_id=1, email="gold@example.com", name="Gold",
                     attributes={"tier": "gold"}, subscribed_at=None)
    plain = Recipient(delivery_id=2, subscriber_id=2, email="plain@example.com", name="Plain",
                      attributes={}, subscribed_at=None)

    async def render_in_helper() -> list[Outgoing | str]:
        ahead = RenderAhead(composer, config)
        try:
            return await ahead.submit([gold, plain, gold])
        finally:
            ahead.close()

    first, failed, last = asyncio.run(render_in_helper())
    assert isinstance(first, Outgoing) and isinstance(last, Outgoing)
    assert b"Your tier: gold" in first.wire and first.recipient == "gold@example.com"
    # the same words the sender would record had it rendered the message itself
    with pytest.raises(MailerError) as here:
        composer.render(plain)
    assert failed == str(here.value)
    assert "tier" in failed and "\n" not in failed


SENDER = """
import asyncio, sys, time
from mailer.config import load_config
from mailer.content.compose import Composer, Recipient
from mailer.db import Database
from mailer.delivery.render_ahead import RenderAhead
from mailer.lifecycle import get_campaign

async def main() -> None:
    config = load_config(sys.argv[1], environ={})
    database = Database(config.database.url)
    with database.session() as session:
        campaign = get_campaign(session, int(sys.argv[2]))
        composer = Composer(config, campaign, campaign.mailing_list)
    ahead = RenderAhead(composer, config)
    await ahead.submit([Recipient(1, 1, "p@example.com", "P", {}, None)])
    print(ahead.helpers[0].process.pid, flush=True)
    time.sleep(600)

asyncio.run(main())
"""


def test_a_helper_exits_when_its_sender_is_killed(
    tmp_path: Path, database: Database, smtp_server: FaultyServer
) -> None:
    # a sender killed with SIGKILL cleans nothing up: its helpers must not stay behind for ever
    list_id = add_audience(database, "news", emails(1))
    campaign_id = make_campaign(database, list_id)
    config_path = sending_config(tmp_path / "mailer.toml", database.url, smtp_server)
    sender = subprocess.Popen([sys.executable, "-c", SENDER, str(config_path), str(campaign_id)],
                              stdout=subprocess.PIPE, text=True)
    assert sender.stdout is not None
    try:
        helper = psutil.Process(int(sender.stdout.readline()))
        assert running(helper)
    finally:
        sender.kill()
        sender.wait(timeout=15)
        # the helper shares this pipe: reading it to its end would wait for the helper too
        sender.stdout.close()
    deadline = time.monotonic() + 15
    try:
        while running(helper):
            assert time.monotonic() < deadline, "the render helper outlived its sender"
            time.sleep(0.05)
    finally:
        if running(helper):
            helper.kill()


def running(process: psutil.Process) -> bool:
    try:
        return bool(process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
