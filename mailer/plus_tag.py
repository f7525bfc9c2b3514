"""The plus-tagged unsubscribe address: a short signed tag in the local part, within RFC 5321's 64 octets."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

from mailer.tokens import UnsubscribeClaim

MAX_LOCAL_PART_OCTETS = 64  # RFC 5321 4.5.3.1.1; longer ones are refused or cut by relays
# the longest tag for ids up to 2**31 (what PostgreSQL's integer keys reach): "zik0zj-zik0zj-zik0zj-"
# and the signature; a mailto whose local part leaves less room after its "+" is refused in config
ROOM_NEEDED = 3 * 7 + 10
# lower case only: relays and mailbox servers may change the case of a local part
_TAG = re.compile(r"^(?P<ids>[0-9a-z]+(?:-[0-9a-z]+){1,2})-(?P<sig>[a-z2-7]{10})$")
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def _base36(number: int) -> str:
    digits = ""
    while True:
        number, rest = divmod(number, 36)
        digits = _DIGITS[rest] + digits
        if not number:
            return digits


def _signature(key: str, ids: str) -> str:
    mac = hmac.new(key.encode("utf-8"), f"unsubscribe-tag:{ids}".encode("ascii"), hashlib.sha256).digest()
    return base64.b32encode(mac[:10]).decode("ascii").lower()[:10]


def room_for_tag(mailto: str) -> int:
    """Octets a tag may use after `local+` in the unsubscribe address."""
    local = mailto.rpartition("@")[0]
    return MAX_LOCAL_PART_OCTETS - len(local.encode("utf-8")) - 1


def make_unsubscribe_address(key: str, mailto: str, claim: UnsubscribeClaim) -> str:
    """`local+<ids>-<signature>@domain`, the local part at most 64 octets.

    The campaign id (attribution only) is left out when it does not fit, and the tag as a
    whole when even the subscriber and list ids do not: the subject still carries the token.
    """
    local, _, domain = mailto.rpartition("@")
    ids = [claim.subscriber_id, claim.list_id or 0, claim.campaign_id or 0]
    for kept in (ids, ids[:2]):
        text = "-".join(_base36(n) for n in kept)
        tag = f"{text}-{_signature(key, text)}"
        if len(tag) <= room_for_tag(mailto):
            return f"{local}+{tag}@{domain}"
    return mailto


def read_unsubscribe_tag(keys: tuple[str, ...], tag: str) -> UnsubscribeClaim | None:
    """Whom a plus-tag unsubscribes, or None when it is not one of ours."""
    match = _TAG.match(tag.lower())
    if match is None:
        return None
    ids = [int(part, 36) for part in match["ids"].split("-")]
    if not any(hmac.compare_digest(_signature(key, match["ids"]), match["sig"]) for key in keys):
        return None
    subscriber_id, list_id, campaign_id = [*ids, 0][:3]
    if subscriber_id <= 0:
        return None
    return UnsubscribeClaim(subscriber_id, list_id or None, campaign_id or None)
