"""The feedback loops an operator trusts: whose spam complaints count when they only name an address."""

from __future__ import annotations

from mailer.config import Config


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
