"""Unsubscribe tokens: signed, short, no address inside, never expire, survive key rotation."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time

import pytest
from compose_helpers import make_config, make_recipient, parse, render, token_of
from itsdangerous import URLSafeSerializer

from mailer.errors import TokenError
from mailer.tokens import (
    PREFERENCES_SALT,
    UNSUBSCRIBE_SALT,
    make_preferences_token,
    make_unsubscribe_token,
    read_preferences_token,
    read_unsubscribe_token,
)

NEW = "newest-signing-key-0123456789abcdef"
OLD = "oldest-signing-key-0123456789abcdef"


def token_from_message(secret_keys: tuple[str, ...], subscriber_id: int = 11) -> str:
    rendered = render(make_config(secret_keys=secret_keys), recipient=make_recipient(subscriber_id=subscriber_id))
    urls = re.findall(r"<([^>]+)>", " ".join(str(parse(rendered.data)["List-Unsubscribe"]).split()))
    return token_of(urls[0])


def test_token_names_subscriber_list_and_campaign() -> None:
    claim = read_unsubscribe_token((NEW,), token_from_message((NEW,)))
    assert (claim.subscriber_id, claim.list_id, claim.campaign_id) == (11, 3, 7)


def test_token_is_short_url_safe_and_holds_no_address() -> None:
    token = token_from_message((NEW,))
    assert len(token) < 100
    assert re.fullmatch(r"[A-Za-z0-9_.-]+", token)
    payload = token.split(".")[0]
    decoded = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    assert json.loads(decoded) == [11, 3, 7]
    assert b"@" not in decoded and b"ana" not in decoded.lower()


def test_old_key_still_verifies_after_rotation_and_newest_key_signs() -> None:
    old_token = token_from_message((OLD,))
    rotated = (NEW, OLD)
    assert read_unsubscribe_token(rotated, old_token).subscriber_id == 11
    new_token = token_from_message(rotated)
    assert read_unsubscribe_token((NEW,), new_token).subscriber_id == 11
    with pytest.raises(TokenError):
        read_unsubscribe_token((OLD,), new_token)


@pytest.mark.parametrize("where", ["payload", "signature", "truncated", "empty", "garbage"])
def test_tampered_tokens_are_rejected(where: str) -> None:
    token = token_from_message((NEW,))
    payload, _, signature = token.partition(".")
    forged_payload = base64.urlsafe_b64encode(b"[12,3,7]").decode().rstrip("=")
    tampered = {
        "payload": f"{forged_payload}.{signature}",
        "signature": f"{payload}.{signature[:-2]}{'A' if signature[-2] != 'A' else 'B'}{signature[-1]}",
        "truncated": token[:-5],
        "empty": "",
        "garbage": "not-a-token",
    }[where]
    with pytest.raises(TokenError):
        read_unsubscribe_token((NEW, OLD), tampered)


def test_token_signed_with_an_unknown_key_is_rejected() -> None:
    stranger = make_unsubscribe_token(("someone-elses-key-0123456789abcdef",), 11, 3, 7)
    with pytest.raises(TokenError):
        read_unsubscribe_token((NEW, OLD), stranger)


def test_token_never_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    token = token_from_message((NEW,))
    years_later = time.time() + 10 * 365 * 24 * 3600
    monkeypatch.setattr(time, "time", lambda: years_later)
    assert read_unsubscribe_token((NEW,), token).subscriber_id == 11


def test_each_subscriber_gets_a_different_token() -> None:
    assert token_from_message((NEW,), 11) != token_from_message((NEW,), 12)


@pytest.mark.parametrize("claim", [
    [11, 3, 7], [11, None, None], [2**31 - 1, 3, None],
    # around the length below which zlib cannot win
    [1, None, None], [111111, 1, None], [1111111, 1, 1], [111111111, 1, 1], [1111111111, 1, 1],
])
def test_links_are_signed_exactly_as_itsdangerous_signs_them(claim: list[int | None]) -> None:
    rotated = (NEW, OLD)
    serializer = URLSafeSerializer([OLD, NEW], salt=UNSUBSCRIBE_SALT, signer_kwargs={"digest_method": hashlib.sha256})
    token = make_unsubscribe_token(rotated, *claim)
    assert token == serializer.dumps(claim)
    assert read_unsubscribe_token(rotated, token).subscriber_id == claim[0]
    preferences = URLSafeSerializer([OLD, NEW], salt=PREFERENCES_SALT,
                                    signer_kwargs={"digest_method": hashlib.sha256})
    assert make_preferences_token(rotated, claim[0]) == preferences.dumps(claim[0])
    assert read_preferences_token(rotated, make_preferences_token(rotated, claim[0])) == claim[0]


def test_links_itsdangerous_would_compress_are_still_read_by_it_and_by_us() -> None:
    # ids this long and repetitive are the only payloads zlib shortens: the mailer signs them
    # uncompressed, which itsdangerous reads as it reads any token, and reads compressed ones
    claim = [1111111111111111111, 1111111111111111111, 1111111111111111111]
    rotated = (NEW, OLD)
    stock = URLSafeSerializer([OLD, NEW], salt=UNSUBSCRIBE_SALT, signer_kwargs={"digest_method": hashlib.sha256})
    ours = make_unsubscribe_token(rotated, *claim)
    assert stock.loads(ours) == claim
    compressed = stock.dumps(claim)
    assert compressed.startswith(".") and compressed != ours
    assert read_unsubscribe_token(rotated, compressed).subscriber_id == claim[0]
