"""Outcomes are written as the relay answers, not when a batch is three quarters done."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from sending_helpers import add_audience, delivery_states, emails, make_campaign, sending_config
from smtp_faults import FaultyServer

from mailer.config import load_config
from mailer.db import Database
from mailer.errors import ConfigError
from mailer.models import DeliveryState


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
