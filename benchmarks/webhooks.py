"""Measures provider webhooks: hard bounces by signed SendGrid batch against the same bounces as DSNs.

Both runs act on N hard bounces of N distinct deliveries in one SQLite database, in the same
process: the baseline hands each bounce as an RFC 3464 DSN to `inbound process`'s per-message
function (what an MTA's pipe or a mailbox run does, without the process start); the webhook run
posts the same number of SendGrid `bounce` events, ECDSA-signed, in batches through the Flask
app, as SendGrid does. Afterwards every delivery must be failed and every address suppressed.

    $ .venv/bin/python benchmarks/webhooks.py --bounces 2000 --batch 500
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mailer.config import Config, config_from_dict
from mailer.db import Database, normalize_email
from mailer.inbound.process import process_message
from mailer.models import (
    Campaign,
    CampaignStatus,
    Delivery,
    DeliveryState,
    Subscriber,
    Suppression,
    utcnow,
)
from mailer.verp import make_delivery_reference, make_return_path
from mailer.web import create_app

SECRET_KEY = "benchmark-signing-key-0123456789"
DSN = """From: Mail Delivery System <MAILER-DAEMON@mx.example.net>
To: {verp}
Subject: Undelivered Mail Returned to Sender
Message-ID: <dsn-{n}@mx.example.net>
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="b"

--b
Content-Type: text/plain

I'm sorry to have to inform you that your message could not be delivered.

--b
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.net

Final-Recipient: rfc822; {email}
Action: failed
Status: 5.1.1
Diagnostic-Code: smtp; 550 5.1.1 <{email}>: Recipient address rejected: User unknown

--b--
"""


def seed(database: Database, count: int) -> list[tuple[int, str]]:
    """`count` subscribers who were each sent one campaign; their delivery ids and addresses."""
    now = utcnow()
    with database.session() as session:
        campaign = Campaign(subject="Benchmark", from_address="news@harmonymails.com",
                            html_template="<p>Hi</p>", status=CampaignStatus.SENT)
        session.add(campaign)
        session.flush()
        emails = [f"reader{n:06d}@example.com" for n in range(count)]
        session.execute(sa.insert(Subscriber), [
            {"email": e, "email_normalized": normalize_email(e), "name": "", "attributes": {},
             "created_at": now, "updated_at": now} for e in emails])
        ids = {email: i for email, i in session.execute(sa.select(Subscriber.email, Subscriber.id))}
        session.execute(sa.insert(Delivery), [
            {"campaign_id": campaign.id, "subscriber_id": ids[e], "state": DeliveryState.SENT, "attempts": 1,
             "created_at": now, "updated_at": now} for e in emails])
        found = session.execute(sa.select(Delivery.id, Subscriber.email)
                                .join(Subscriber, Subscriber.id == Delivery.subscriber_id).order_by(Delivery.id))
        return [(delivery_id, email) for delivery_id, email in found]


def run_dsns(database: Database, config: Config, targets: list[tuple[int, str]]) -> float:
    started = time.perf_counter()
    for n, (delivery_id, email) in enumerate(targets):
        raw = DSN.format(verp=make_return_path(config, delivery_id), email=email, n=n).replace("\n", "\r\n")
        item = process_message(database, config, raw.encode())
        assert item.kind.value == "hard_bounce", item.note
    return time.perf_counter() - started


def run_webhooks(config: Config, key: ec.EllipticCurvePrivateKey, targets: list[tuple[int, str]],
                 batch: int) -> float:
    app = create_app(config)
    client = app.test_client()
    started = time.perf_counter()
    for first in range(0, len(targets), batch):
        events = [{"email": email, "timestamp": 1764428378, "event": "bounce", "sg_event_id": f"bench-{delivery_id}",
                   "status": "5.1.1", "reason": "550 5.1.1 User unknown", "type": "bounce",
                   "mailer_ref": make_delivery_reference(config, delivery_id)}
                  for delivery_id, email in targets[first:first + batch]]
        body = json.dumps(events).encode()
        stamp = str(int(time.time()))
        signature = base64.b64encode(key.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))).decode()
        response = client.post("/webhooks/sendgrid", data=body, headers={
            "X-Twilio-Email-Event-Webhook-Signature": signature,
            "X-Twilio-Email-Event-Webhook-Timestamp": stamp, "Content-Type": "application/json"})
        assert response.status_code == 200 and response.get_json()["outcomes"] == {"hard_bounce": len(events)}
    elapsed = time.perf_counter() - started
    app.extensions["mailer"].database.dispose()
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bounces", type=int, default=2000, help="hard bounces per run")
    parser.add_argument("--batch", type=int, default=500, help="events per SendGrid post")
    args = parser.parse_args()
    key = ec.generate_private_key(ec.SECP256R1())
    public = base64.b64encode(key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        database = Database(url)
        database.upgrade()
        config = config_from_dict({"database": {"url": url}, "unsubscribe": {"secret_keys": [SECRET_KEY]},
                                   "webhooks": {"sendgrid_public_key": public}})
        targets = seed(database, 2 * args.bounces)
        dsn_seconds = run_dsns(database, config, targets[:args.bounces])
        hook_seconds = run_webhooks(config, key, targets[args.bounces:], args.batch)
        with database.session() as session:
            failed = session.scalar(sa.select(sa.func.count()).select_from(Delivery)
                                    .where(Delivery.state == DeliveryState.FAILED))
            suppressed = session.scalar(sa.select(sa.func.count()).select_from(Suppression))
        database.dispose()
    dsn_rate, hook_rate = args.bounces / dsn_seconds, args.bounces / hook_seconds
    print(f"DSNs through inbound process:      {args.bounces} in {dsn_seconds:.2f} s = {dsn_rate:,.0f} bounces/s")
    print(f"SendGrid webhook ({args.batch}/post, signed): {args.bounces} in {hook_seconds:.2f} s "
          f"= {hook_rate:,.0f} bounces/s")
    print(f"ratio webhook / DSN: {hook_rate / dsn_rate:.2f}x")
    ok = failed == suppressed == 2 * args.bounces
    print(f"check: {failed} deliveries failed, {suppressed} addresses suppressed, expected {2 * args.bounces} each: "
          + ("ok" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
