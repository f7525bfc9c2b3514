"""The feedback loops an operator trusts: whose spam complaints count when they only name an address."""

from __future__ import annotations

import re
from email.message import Message

from mailer.config import Config

# one Authentication-Results header as a person reads it, cut short: no real one is longer
_MAX_RESULTS_CHARS = 4000
_COMMENT = re.compile(r"\([^()]*\)")
_DMARC_PASS = re.compile(r"^\s*dmarc\s*=\s*pass\b", re.IGNORECASE)
_HEADER_FROM = re.compile(r"\bheader\.from\s*=\s*\"?([^\s;\"]+)", re.IGNORECASE)


def is_feedback_loop_sender(config: Config, address: str) -> bool:
    """True when the address, or its domain exactly, is listed in inbound.feedback_loop_senders."""
    address = address.strip().lower()
    local, at, domain = address.rpartition("@")
    if not (local and at and domain):
        return False
    for entry in config.inbound.feedback_loop_senders:
        entry = entry.strip().lower()
        # a domain does not cover its subdomains: whoever can send as one is not vouched for
        if (address == entry) if "@" in entry else (domain == entry):
            return True
    return False


def is_trusted_feedback_loop(config: Config, msg: Message, from_address: str) -> bool:
    """A report from a configured feedback loop that, when asked to, our MTA found DMARC-aligned.

    Without inbound.trusted_authserv_ids the From address alone decides. With them, the
    topmost Authentication-Results header one of them added must say dmarc=pass for the
    From domain: the MTA prepends its header, so one an attacker wrote sits below it.
    """
    if not is_feedback_loop_sender(config, from_address):
        return False
    trusted = {entry.strip().lower() for entry in config.inbound.trusted_authserv_ids}
    if not trusted:
        return True
    domain = from_address.rpartition("@")[2].lower()
    for value in msg.get_all("Authentication-Results", []):
        text = str(value)[:_MAX_RESULTS_CHARS]
        for _round in range(5):  # nested comments, a few levels deep at most
            text = _COMMENT.sub(" ", text)
        authserv_id, *results = text.split(";")
        if (authserv_id.split() or [""])[0].lower() not in trusted:
            continue
        return any(_DMARC_PASS.match(result) and (found := _HEADER_FROM.search(result))
                   and found.group(1).lower() == domain for result in results)
    return False
