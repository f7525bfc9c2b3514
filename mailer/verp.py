"""VERP return paths: a bounce address per delivery that maps back to it and cannot be forged."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re

from mailer.config import Config

_LOCAL = re.compile(r"^b-(?P<id>[0-9]+)-(?P<sig>[a-z2-7]{10})$")


def _signature(key: str, delivery_id: int) -> str:
    mac = _keyed(key).copy()
    mac.update(f"verp:{delivery_id}".encode("ascii"))
    return base64.b32encode(mac.digest()[:10]).decode("ascii").lower()[:10]


@functools.lru_cache(maxsize=16)
def _keyed(key: str) -> hmac.HMAC:
    # keyed once: a return path is made for every message sent
    return hmac.new(key.encode("utf-8"), digestmod=hashlib.sha256)


def make_return_path(config: Config, delivery_id: int) -> str:
    """`b-<delivery id>-<signature>@<bounce domain>`, signed with the newest key."""
    key = config.require_secret_keys()[0]
    return f"b-{delivery_id}-{_signature(key, delivery_id)}@{config.sender.bounce_domain}"


def parse_return_path(config: Config, address: str) -> int | None:
    """The delivery id a VERP address stands for, or None when it is not one of ours."""
    local, _, domain = address.strip().strip("<>").rpartition("@")
    if domain.lower() != config.sender.bounce_domain.lower():
        return None
    match = _LOCAL.match(local.lower())
    if match is None:
        return None
    delivery_id = int(match["id"])
    for key in config.require_secret_keys():
        if hmac.compare_digest(_signature(key, delivery_id), match["sig"]):
            return delivery_id
    return None


# the name under which a provider's header carries a delivery's reference, echoed in its webhooks
PROVIDER_REFERENCE_NAME = "mailer_ref"


def make_delivery_reference(config: Config, delivery_id: int) -> str:
    """`b-<delivery id>-<signature>`: the return path's signed local part, for a provider header.

    Letters, digits and dashes only, as every provider's tags and variables allow."""
    return make_return_path(config, delivery_id).partition("@")[0]


def parse_delivery_reference(config: Config, reference: str) -> int | None:
    """The delivery a reference stands for, or None when it is not one we signed."""
    return parse_return_path(config, f"{reference}@{config.sender.bounce_domain}")
