"""Outcomes are written as the relay answers, not when a batch is three quarters done."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sending_helpers import (
    add_audience,
    configure,
    delivery_states,
    emails,
    make_campaign,
    sending_config,
)
from smtp_faults import FaultyServer

from mailer.config import load_config
from mailer.db import Database
from mailer.delivery.claims import Batch
from mailer.delivery.pipeline import CampaignSender, SendReport
from mailer.errors import ConfigError
from mailer.lifecycle import start_campaign
from mailer.models import DeliveryState, utcnow


@pytest.mark.slow
def test_a_message_the_relay_took_is_recorded_as_sent_within_a_second(
    tmp_path: Path, database: Database, smtp_server: FaultyServer
) -> None:
    # 20 a second: a batch of 100 used to be recorded only when 75 were done, ~4 s later
    campaign_id = make_campaign(database, add_audience(database, "news", emails(80)))
    config = sending_config(tmp_path / "mailer.toml", database.url, smtp_server, connections=2, rate=20)
    proc = subprocess.Popen([sys.executable, "-m", "mailer", "--config", str(config), "campaign", "send",
                             str(campaign_id)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while len(smtp_server.messages) < 20:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.02)
        taken = set(smtp_server.handler.rcpt_counts)
        time.sleep(1)
        states = delivery_states(database, campaign_id)
        still_sending = proc.poll() is None
    finally:
        out, err = proc.communicate(timeout=60)

    assert still_sending, "the send finished before the check"
    assert {a for a in taken if states[a].state is not DeliveryState.SENT} == set()
    assert proc.returncode == 0, err
    assert "80 sent" in out


def test_reconnect_for_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "mailer.toml"
    path.write_text('[database]\nurl = "sqlite:///m.db"\nreconnect_for = -1\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"database\.reconnect_for: must be from 0 to 86400 seconds"):
        load_config(path, environ={})
    path.write_text('[database]\nurl = "sqlite:///m.db"\nreconnect_for = "soon"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"database\.reconnect_for: must be a number"):
        load_config(path, environ={})


def test_a_batch_of_one_sends_everything_with_a_transaction_or_two_per_message(
    tmp_path: Path, database: Database, smtp_server: FaultyServer
) -> None:
    campaign_id = make_campaign(database, add_audience(database, "news", emails(12)))
    config = configure(tmp_path, database, smtp_server, connections=2, batch_size=1)
    with database.session() as session:
        start_campaign(session, campaign_id, utcnow())
    writes = [0]

    async def send() -> SendReport:
        async with CampaignSender(config, database) as sender:
            claim = sender.store.claim_batch

            def counted(*args: Any) -> Batch:
                writes[0] += 1
                return claim(*args)

            sender.store.claim_batch = counted  # type: ignore[method-assign]
            return await sender.send(campaign_id)

    report = asyncio.run(send())

    assert report.sent == 12 and len(smtp_server.handler.rcpt_counts) == 12
    assert writes[0] <= 2 * 12 + 2  # never a claim with no room: that would spin
