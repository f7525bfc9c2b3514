"""A sender busy with a long send sets aside a dead sender's claims while it sends, not at its next cycle."""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from sending_helpers import add_audience, delivery_states, emails, make_campaign, sending_config
from smtp_faults import FaultyServer

from mailer.db import Database
from mailer.delivery.claims import SqlDeliveryStore
from mailer.lifecycle import start_campaign
from mailer.models import Delivery, DeliveryState, utcnow

CLAIM_TIMEOUT = 10  # the shortest the config allows

pytestmark = pytest.mark.slow

# a sender on this host that claims three deliveries, says so, and waits to be killed
CLAIMER = """
import sys, time
from mailer.db import Database
from mailer.delivery.claims import SqlDeliveryStore
from mailer.models import utcnow
store = SqlDeliveryStore(Database(sys.argv[1]))
batch = store.claim_batch(int(sys.argv[2]), 3, utcnow())
print(len(batch.recipients), flush=True)
time.sleep(120)
"""


def in_doubt(database: Database, campaign_id: int) -> int:
    return sum(d.state is DeliveryState.IN_DOUBT for d in delivery_states(database, campaign_id).values())


def test_a_busy_sender_sets_aside_a_killed_senders_claims_within_claim_timeout(
    tmp_path: Path, database: Database, smtp_server: FaultyServer
) -> None:
    busy = make_campaign(database, add_audience(database, "news", emails(40)))
    other = make_campaign(database, add_audience(database, "offers", emails(10, prefix="other")))
    with database.session() as session:
        start_campaign(session, other, utcnow())
    config = sending_config(tmp_path / "mailer.toml", database.url, smtp_server, connections=2, rate=2,
                            extra=f"claim_timeout = {CLAIM_TIMEOUT}\n")  # still in [sending]
    # 40 messages at 2 a second: busy for 20 s, and past its own start of cycle from the first one
    sender = subprocess.Popen([sys.executable, "-m", "mailer", "--config", str(config), "campaign", "send",
                               str(busy)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while len(smtp_server.messages) < 2:
            assert sender.poll() is None, sender.communicate()
            time.sleep(0.05)

        # now another sender claims three, and is killed; a host elsewhere holds three more and
        # goes silent: its last heartbeat was CLAIM_TIMEOUT - 2 s ago
        claimer = subprocess.Popen([sys.executable, "-c", CLAIMER, database.url, str(other)],
                                   stdout=subprocess.PIPE, text=True)
        assert claimer.stdout is not None and claimer.stdout.readline().strip() == "3"
        claimer.send_signal(signal.SIGKILL)
        claimer.communicate()
        silent_since = utcnow() - dt.timedelta(seconds=CLAIM_TIMEOUT - 2)
        assert len(SqlDeliveryStore(database, "elsewhere:4242:").claim_batch(other, 3, silent_since).recipients) == 3
        killed_at = time.monotonic()

        while in_doubt(database, other) < 6 and time.monotonic() - killed_at < CLAIM_TIMEOUT + 5:
            time.sleep(0.1)
        noticed_after = time.monotonic() - killed_at
        still_sending = sender.poll() is None and len(smtp_server.messages) < 40
    finally:
        sender.send_signal(signal.SIGTERM)
        out, err = sender.communicate(timeout=60)

    assert in_doubt(database, other) == 6, (out, err)
    assert noticed_after < CLAIM_TIMEOUT  # the silent host's claims went stale 2 s after the kill
    assert still_sending  # nobody started a new cycle: the busy sender did it while it sent
    with database.session() as session:
        pending = session.scalar(sa.select(sa.func.count()).select_from(Delivery).where(
            Delivery.campaign_id == other, Delivery.state == DeliveryState.PENDING))
    assert pending == 4  # the rest of that campaign is untouched, for its own sender
