"""Whatever a webhook payload holds, reading it gives events or nothing, never an exception."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from webhook_helpers import PAYLOAD

from mailer.bounce_class import BounceClass
from mailer.inbound.events import EventKind, ProviderEvent, Verdict, bounce_class
from mailer.web.webhooks.mailgun import mailgun_event
from mailer.web.webhooks.postmark import postmark_event
from mailer.web.webhooks.sendgrid import sendgrid_event
from mailer.web.webhooks.ses import ses_events


@given(PAYLOAD)
def test_any_payload_reads_as_events(data: dict[str, Any]) -> None:
    events = [sendgrid_event(data), mailgun_event(data), postmark_event(data), *ses_events("sns-id", data)]
    assert all(isinstance(event, ProviderEvent) and isinstance(event.kind, EventKind) for event in events)
    for event in events:
        if event.kind is EventKind.BOUNCE:
            assert isinstance(bounce_class(event)[0], BounceClass)


def test_the_servers_status_outweighs_the_providers_verdict() -> None:
    def judge(verdict: Verdict, status: str = "", diagnostic: str = "") -> BounceClass:
        return bounce_class(ProviderEvent("sendgrid", "1", EventKind.BOUNCE, verdict=verdict, status=status,
                                          diagnostic=diagnostic))[0]

    assert judge(Verdict.GONE, "5.7.1") is BounceClass.POLICY_BLOCK  # "bounce" at SendGrid, a block in fact
    assert judge(Verdict.GONE, diagnostic="421 4.7.0 try again later") is BounceClass.TRANSIENT
    assert judge(Verdict.POLICY, "5.1.1") is BounceClass.MAILBOX_GONE
    assert judge(Verdict.GONE) is BounceClass.MAILBOX_GONE  # the server said nothing: the provider decides
    assert judge(Verdict.POLICY, "5.0.0", "550 rejected") is BounceClass.POLICY_BLOCK
    assert judge(Verdict.UNKNOWN, "5.0.0", "550 rejected") is BounceClass.FAILED
