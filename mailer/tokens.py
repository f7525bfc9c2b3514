"""Signed tokens for unsubscribe, confirmation, preference and identity links (itsdangerous)."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

from itsdangerous import BadData, Serializer, Signer, URLSafeSerializer, URLSafeTimedSerializer
from itsdangerous.encoding import base64_encode, want_bytes

from mailer.errors import TokenError

UNSUBSCRIBE_SALT = "mailer.unsubscribe"
CONFIRM_SALT = "mailer.confirm"
PREFERENCES_SALT = "mailer.preferences"
IDENTITY_SALT = "mailer.identity"
_SIGNER_KWARGS = {"digest_method": hashlib.sha256}


@dataclass(frozen=True)
class UnsubscribeClaim:
    """Who a link unsubscribes: ids only, never the address itself."""

    subscriber_id: int
    list_id: int | None
    campaign_id: int | None


def _ordered(keys: tuple[str, ...] | list[str]) -> list[str]:
    if not keys:
        raise TokenError("no signing key configured")
    # config lists the newest key first; itsdangerous signs with the last and verifies with all
    return list(reversed(keys))


class _LinkSigner(Signer):
    """HMAC-SHA256 as Signer makes it, with the key derived once rather than for every link."""

    @functools.cached_property
    def _signing_key(self) -> bytes:
        return self.derive_key()

    def get_signature(self, value: str | bytes) -> bytes:
        # hmac.digest: the same MAC in one call, without building an HMAC object per link
        return base64_encode(hmac.digest(self._signing_key, want_bytes(value), self.digest_method))


class _CompactJson:
    """itsdangerous's compact JSON, with one encoder kept rather than one made per token."""

    dumps = json.JSONEncoder(separators=(",", ":")).encode
    loads = staticmethod(json.loads)


class _LinkSerializer(URLSafeSerializer):
    """URLSafeSerializer for the links of a campaign, which signs two per message.

    Its tokens are URLSafeSerializer's own and read by it: one signer is kept instead of one
    built per link, and the payload (a few ids) is not offered to zlib, which seldom makes JSON
    this short any shorter and cost more than the signature."""

    default_signer = _LinkSigner
    default_serializer = _CompactJson

    def make_signer(self, salt: str | bytes | None = None) -> Signer:
        if salt is not None and salt != self.salt:
            return super().make_signer(salt)
        return self._signer

    @functools.cached_property
    def _signer(self) -> Signer:
        return super().make_signer(self.salt)

    def dump_payload(self, obj: Any) -> bytes:
        return base64_encode(Serializer.dump_payload(self, obj))


@functools.lru_cache(maxsize=16)
def _link_serializer(keys: tuple[str, ...], salt: str) -> URLSafeSerializer:
    # a campaign signs two links per message: building the serializer for each cost more than
    # signing with it, so one is kept per key set and salt
    return _LinkSerializer(_ordered(keys), salt=salt, signer_kwargs=_SIGNER_KWARGS)


def _signer_for(keys: tuple[str, ...] | list[str], salt: str) -> URLSafeSerializer:
    return _link_serializer(tuple(keys), salt)


def _load(serializer: URLSafeSerializer | URLSafeTimedSerializer, token: str, error: str, **kwargs: Any) -> Any:
    """What a token carries; TokenError(error) when it is tampered with, truncated, expired or not ours."""
    try:
        return serializer.loads(token, **kwargs)
    except (BadData, UnicodeError, ValueError) as exc:
        raise TokenError(error) from exc


def make_unsubscribe_token(
    keys: tuple[str, ...] | list[str],
    subscriber_id: int,
    list_id: int | None,
    campaign_id: int | None = None,
) -> str:
    """A URL-safe token that never expires and verifies under any configured key."""
    return str(_signer_for(keys, UNSUBSCRIBE_SALT).dumps([subscriber_id, list_id, campaign_id]))


def read_unsubscribe_token(keys: tuple[str, ...] | list[str], token: str) -> UnsubscribeClaim:
    """Verify a token; raises TokenError when it is tampered with, truncated or not ours."""
    serializer = URLSafeSerializer(_ordered(keys), salt=UNSUBSCRIBE_SALT, signer_kwargs=_SIGNER_KWARGS)
    payload = _load(serializer, token, "invalid unsubscribe token")
    return _claim(payload)


def make_confirm_token(keys: tuple[str, ...] | list[str], subscriber_id: int, list_id: int) -> str:
    """A double opt-in confirmation token; it carries its signing time so it can expire."""
    serializer = URLSafeTimedSerializer(_ordered(keys), salt=CONFIRM_SALT, signer_kwargs=_SIGNER_KWARGS)
    return str(serializer.dumps([subscriber_id, list_id]))


def read_confirm_token(
    keys: tuple[str, ...] | list[str], token: str, max_age_seconds: float
) -> tuple[int, int, dt.datetime]:
    """Verify a confirmation token younger than max_age_seconds and return its subscriber id,
    list id and signing time (whole seconds, UTC); raises TokenError otherwise."""
    serializer = URLSafeTimedSerializer(_ordered(keys), salt=CONFIRM_SALT, signer_kwargs=_SIGNER_KWARGS)
    payload, issued_at = _load(serializer, token, "invalid or expired confirmation token",
                               max_age=int(max_age_seconds), return_timestamp=True)
    if (
        not isinstance(payload, list)
        or len(payload) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in payload)
    ):
        raise TokenError("invalid confirmation token")
    return payload[0], payload[1], issued_at


def _claim(payload: Any) -> UnsubscribeClaim:
    if not isinstance(payload, list) or len(payload) != 3:
        raise TokenError("invalid unsubscribe token")
    subscriber_id, list_id, campaign_id = payload

    def is_id(value: Any, optional: bool) -> bool:
        if value is None:
            return optional
        return isinstance(value, int) and not isinstance(value, bool) and value > 0

    if not (is_id(subscriber_id, False) and is_id(list_id, True) and is_id(campaign_id, True)):
        raise TokenError("invalid unsubscribe token")
    return UnsubscribeClaim(subscriber_id, list_id, campaign_id)


def make_preferences_token(keys: tuple[str, ...] | list[str], subscriber_id: int) -> str:
    """The footer's preference-centre token: names one subscriber, never expires, like unsubscribe's."""
    return str(_signer_for(keys, PREFERENCES_SALT).dumps(subscriber_id))


def read_preferences_token(keys: tuple[str, ...] | list[str], token: str) -> int:
    """The subscriber id a preference-centre token names; raises TokenError when it is not ours."""
    serializer = URLSafeSerializer(_ordered(keys), salt=PREFERENCES_SALT, signer_kwargs=_SIGNER_KWARGS)
    payload = _load(serializer, token, "invalid preferences token")
    if not isinstance(payload, int) or isinstance(payload, bool) or payload <= 0:
        raise TokenError("invalid preferences token")
    return payload


def make_identity_token(keys: tuple[str, ...] | list[str], nonce: str) -> str:
    """A token for an emailed identity link; the nonce names its row, which says whether it was used."""
    serializer = URLSafeTimedSerializer(_ordered(keys), salt=IDENTITY_SALT, signer_kwargs=_SIGNER_KWARGS)
    return str(serializer.dumps(nonce))


def read_identity_token(keys: tuple[str, ...] | list[str], token: str, max_age_seconds: float) -> str:
    """The nonce of an identity token younger than max_age_seconds; raises TokenError otherwise."""
    serializer = URLSafeTimedSerializer(_ordered(keys), salt=IDENTITY_SALT, signer_kwargs=_SIGNER_KWARGS)
    payload = _load(serializer, token, "invalid or expired identity link", max_age=int(max_age_seconds))
    if not isinstance(payload, str) or not 0 < len(payload) <= 64:
        raise TokenError("invalid identity link")
    return payload
