"""The one table of refusals: which say the mailbox is gone, which are policy blocks, which are retried."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailer.bounce_class import BounceClass, classify, enhanced_status, reply_code
from mailer.delivery.transport import SendStatus, classify_reply

GONE, POLICY, FAILED, TRANSIENT, DELIVERED = (BounceClass.MAILBOX_GONE, BounceClass.POLICY_BLOCK,
                                              BounceClass.FAILED, BounceClass.TRANSIENT, BounceClass.DELIVERED)


@pytest.mark.parametrize(("code", "status", "text", "expected"), [
    # what real servers answer, as the relay passes it on during the send
    (554, "", "5.7.1 Service unavailable; Client host [203.0.113.5] blocked using zen.spamhaus.org", POLICY),
    (550, "", "5.7.26 Unauthenticated email from harmonymails.com is not accepted due to domain's DMARC policy",
     POLICY),
    (550, "", "5.7.708 Service unavailable. Access denied, traffic not accepted from this IP.", POLICY),
    (553, "", "5.7.1 [BL21] Connections will not be accepted from 203.0.113.5", POLICY),
    (550, "", "5.1.1 <ana@example.net>: Recipient address rejected: User unknown", GONE),
    (550, "", "5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup", GONE),
    (550, "", "5.2.1 The email account that you tried to reach is disabled", GONE),
    (550, "", "5.4.4 Unrouteable address", GONE),
    (553, "", "5.1.8 <news@harmonymails.com>: Sender address rejected: Domain not found", FAILED),
    (550, "", "5.2.2 mailbox full", TRANSIENT),
    (554, "", "5.6.0 Message content rejected", FAILED),
    (554, "", "5.3.4 Message too big for system", FAILED),
    # without an enhanced code the words decide, policy first
    (554, "", "Service unavailable; Client host [203.0.113.5] blocked using b.barracudacentral.org", POLICY),
    (550, "", "Message rejected due to local policy", POLICY),
    (550, "", "SPF check failed: harmonymails.com does not designate 203.0.113.5", POLICY),
    (550, "", "No such user here", GONE),
    (554, "", "delivery error: dd This user doesn't have a yahoo.com account", GONE),
    (550, "", "mailbox unavailable", FAILED),  # RFC 5321's text for any 550, policy ones too
    (550, "", "Requested action not taken", FAILED),
    # COMPLIANCE 30: these are retried, whatever the words
    (421, "", "4.7.0 Try again later, closing connection (IP reputation)", TRANSIENT),
    (450, "", "4.2.1 The user you are trying to contact is receiving mail too quickly", TRANSIENT),
    (451, "", "4.7.1 Greylisted, please try again", TRANSIENT),
    (452, "", "4.5.3 Too many recipients", TRANSIENT),
    (552, "", "5.5.3 Too many recipients", TRANSIENT),
    (250, "", "2.0.0 OK", DELIVERED),
    (354, "", "user unknown", FAILED),  # not a refusal SMTP defines
    # DSNs: the Status field, and the diagnostic when it is x.0.0
    (None, "5.7.1", "blocked using zen.spamhaus.org", POLICY),
    (None, "5.1.1", "", GONE),
    (None, "4.4.1", "Connection timed out", TRANSIENT),
    (None, "5.0.0", "No Such User Here", GONE),
    # Exim's non-committal 5.0.0 leaves it to the code the receiving server gave
    (None, "5.0.0", "5.7.1 Unable to relay: invalid recipient for this sending host", POLICY),
    (None, "5.0.0", "5.7.1 <news@harmonymails.com>: Sender address rejected: user unknown in local recipient "
     "table", POLICY),
    (None, "5.0.0", "550 5.7.1 invalid recipient: relaying denied", POLICY),
    (None, "5.0.0", "smtp; 550-5.7.26 Unauthenticated email: user unknown", POLICY),
    (None, "5.0.0", "5.1.1 <dana@example.com>: Recipient address rejected: User unknown", GONE),
    (None, "5.0.0", "4.2.2 mailbox over quota: user unknown", TRANSIENT),
    (None, "4.0.0", "5.1.1 user unknown", TRANSIENT),  # the class a status commits to still counts
    (None, "5.1.1", "5.7.1 blocked using zen.spamhaus.org", GONE),  # a committing status decides
    # refusals of our sender or of relaying name no gone mailbox of the recipient
    (None, "5.0.0", "Message rejected: sender account disabled", FAILED),
    (None, "5.0.0", "invalid recipient: relaying denied", FAILED),
    (None, "5.0.0", "Unable to relay: invalid recipient for this sending host", FAILED),
    (550, "", "<news@harmonymails.com>: Sender address rejected: user unknown in local recipient table", FAILED),
    (554, "", "Relaying denied: no such user", FAILED),
    (550, "", "Sender address rejected: blocked using zen.spamhaus.org", POLICY),  # policy words first
    (None, "5.0.0", "", FAILED),
    (None, "", "", FAILED),
])
def test_the_table(code: int | None, status: str, text: str, expected: BounceClass) -> None:
    assert classify(code, status, text) is expected


def test_only_a_gone_mailbox_suppresses() -> None:
    assert [c for c in BounceClass if c.suppresses] == [GONE]
    assert {c for c in BounceClass if c.permanent} == {GONE, POLICY, FAILED}


def test_codes_are_found_where_servers_write_them() -> None:
    assert enhanced_status("smtp; 550-5.7.26 Unauthenticated email") == "5.7.26"
    assert enhanced_status("host [203.0.113.5] said 5.1.1") == "5.1.1"
    assert enhanced_status("version 1.2.3.4") == ""
    assert reply_code("smtp; 554 5.7.1 blocked") == 554
    assert reply_code("Client host [203.0.113.5]") is None


def test_a_550_5_7_1_during_the_send_fails_without_suppressing_and_is_a_policy_block() -> None:
    result = classify_reply(550, "5.7.1 Client host [203.0.113.5] blocked using zen.spamhaus.org")
    assert (result.status, result.hard_bounce, result.policy_block) == (SendStatus.PERMANENT, False, True)
    gone = classify_reply(550, "5.1.1 no such user")
    assert (gone.status, gone.hard_bounce, gone.policy_block) == (SendStatus.PERMANENT, True, False)


_STATUS = r"([245])\.(\d{1,3})\.(\d{1,3})"
_REPLY_STATUS = r"\s*(?:[\w-]{1,20};\s*)?(?:[245]\d\d[ -]\s*)?" + _STATUS + r"(?![\d.]*\d)"
_GONE_STATUS = re.compile(r"5\.(1\.(?:[0-6]|10)|2\.1|4\.4)")
_PHRASES = ["user unknown", "no such user", "blocked using", "spamhaus", "DMARC", "SPF", "5.7.1", "5.1.1",
            "5.2.1", "5.4.4", "4.2.2", "550 ", "mailbox full", "access denied", "doesn't have a x account",
            "smtp; ", "550-", "sender address rejected:", "Sender account disabled", "relaying denied",
            "Unable to relay", "invalid recipient", "account disabled"]
_SENDER = re.compile(r"sender (?:address |account )?(?:rejected|disabled)|relaying denied|unable to relay",
                     re.IGNORECASE)
texts = st.lists(st.one_of(st.sampled_from(_PHRASES), st.text(max_size=40)), max_size=6).map(" ".join)
statuses = st.one_of(
    st.just(""),
    st.just("5.0.0"),
    st.builds("{}.{}.{}".format, st.sampled_from([2, 4, 5]), st.integers(0, 12), st.integers(0, 800)),
    st.text(max_size=12),
)
codes = st.one_of(st.none(), st.integers(200, 599), st.integers(-10**6, 10**6))


@settings(max_examples=200)
@given(codes, statuses, texts)
def test_nothing_but_a_gone_mailbox_ever_suppresses(code: int | None, status: str, text: str) -> None:
    found = classify(code, status, text)  # never raises, whatever it is given
    if not found.suppresses:
        return
    # only a permanent refusal (5xx, but not 552, which is retried) or a DSN's status without one
    assert code is None or (500 <= code < 600 and code != 552)
    parsed = re.fullmatch(_STATUS, status.strip())
    if parsed is None or tuple(map(int, parsed.groups())) == (5, 0, 0):  # Exim's 5.0.0 commits to nothing
        parsed = re.match(_REPLY_STATUS, text) or parsed
    if parsed is not None and _GONE_STATUS.fullmatch(".".join(parsed.groups())):
        return  # 5.1.x, 5.2.1, 5.4.4
    # otherwise no committing status at all (none, or x.0.0) and words that say the mailbox is
    # gone, none of them a blocklist's or an authentication check's
    assert parsed is None or parsed.group(2, 3) == ("0", "0")
    lowered = text.lower()
    assert any(p in lowered for p in ("unknown", "no such", "exist", "not found", "disabled", "invalid",
                                      "unrouteable", "no mailbox", "account"))
    assert not re.search(r"blocked using|spamhaus|\bdmarc\b|\bspf\b|access denied", lowered)
    assert not _SENDER.search(text)  # the gone mailbox of our sender is not the recipient's


@settings(max_examples=100)
@given(st.sampled_from(["5.7.1", "5.7.26", "5.7.708", "5.7.0", "5.7.999"]), texts, codes)
def test_a_5_7_status_is_never_a_gone_mailbox(status: str, text: str, code: int | None) -> None:
    assert not classify(code, status, text).suppresses


@settings(max_examples=150)
@given(st.sampled_from(["", "5.0.0", " 5.0.0 "]), st.sampled_from(["", "smtp; ", "smtp;"]),
       st.sampled_from(["", "550 ", "554-", "550-"]), st.sampled_from(["5.7.1", "5.7.26", "5.7.0", "5.7.999"]),
       texts, st.one_of(st.none(), st.sampled_from([550, 553, 554])))
def test_a_5_7_code_in_the_servers_reply_is_never_a_gone_mailbox_when_the_status_commits_to_nothing(
    status: str, kind: str, reply: str, said: str, text: str, code: int | None
) -> None:
    assert classify(code, status, f"{kind}{reply}{said} {text}") is POLICY
