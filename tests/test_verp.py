"""VERP return paths: every bounce maps back to the delivery it was sent for, and a forged one maps to nothing."""

from __future__ import annotations

import pytest
from compose_helpers import OLD_SECRET, SECRET, make_config
from hypothesis import given
from hypothesis import strategies as st

from mailer.verp import make_return_path, parse_return_path

BOUNCES = "bounces.harmonymails.com"
CONFIG = make_config(sender={"bounce_domain": BOUNCES})
delivery_ids = st.integers(min_value=0, max_value=2**63 - 1)


@given(delivery_ids)
def test_a_return_path_maps_back_to_its_delivery(delivery_id: int) -> None:
    address = make_return_path(CONFIG, delivery_id)
    assert address.startswith(f"b-{delivery_id}-") and address.endswith(f"@{BOUNCES}")
    assert parse_return_path(CONFIG, address) == delivery_id


@given(delivery_ids, delivery_ids)
def test_a_signature_does_not_fit_another_delivery(delivery_id: int, other_id: int) -> None:
    # a bounce forged for someone else's delivery must not fail or suppress it
    local, _, domain = make_return_path(CONFIG, delivery_id).partition("@")
    signature = local.rpartition("-")[2]
    forged = f"b-{other_id}-{signature}@{domain}"
    assert parse_return_path(CONFIG, forged) == (delivery_id if other_id == delivery_id else None)


@given(delivery_ids, st.integers(min_value=0, max_value=9), st.sampled_from("abcdefghijklmnopqrstuvwxyz234567"))
def test_a_changed_signature_character_is_refused(delivery_id: int, position: int, replacement: str) -> None:
    address = make_return_path(CONFIG, delivery_id)
    local, _, domain = address.partition("@")
    head, _, signature = local.rpartition("-")
    changed = signature[:position] + replacement + signature[position + 1:]
    expected = delivery_id if changed == signature else None
    assert parse_return_path(CONFIG, f"{head}-{changed}@{domain}") == expected


def test_the_return_path_uses_the_configured_bounce_domain_and_no_other() -> None:
    own = make_config(sender={"bounce_domain": "return.example.org"})
    address = make_return_path(own, 42)
    assert address.endswith("@return.example.org")
    assert parse_return_path(own, address) == 42
    # the same local part at the default bounce domain is not this installation's
    assert parse_return_path(own, address.replace("return.example.org", BOUNCES)) is None
    assert parse_return_path(CONFIG, address) is None


def test_case_angle_brackets_and_blanks_do_not_matter() -> None:
    # some relays upper-case the address, and Return-Path headers carry <...>
    address = make_return_path(CONFIG, 7321)
    for written in (address.upper(), f"<{address}>", f"  <{address}>\r\n", address.replace(BOUNCES, BOUNCES.upper())):
        assert parse_return_path(CONFIG, written) == 7321, written


def test_a_bounce_for_mail_signed_with_a_retired_key_still_maps_back() -> None:
    before = make_config(secret_keys=(OLD_SECRET,), sender={"bounce_domain": BOUNCES})
    rotated = make_config(secret_keys=(SECRET, OLD_SECRET), sender={"bounce_domain": BOUNCES})
    old_address = make_return_path(before, 99)
    assert parse_return_path(rotated, old_address) == 99
    # new mail is signed with the newest key, so dropping the old key later loses nothing new
    assert make_return_path(rotated, 99) == make_return_path(CONFIG, 99) != old_address
    assert parse_return_path(CONFIG, old_address) is None


@pytest.mark.parametrize("address", [
    "ana@example.com",
    f"postmaster@{BOUNCES}",
    f"b-12@{BOUNCES}",
    f"b-12-abcdefghij@{BOUNCES}",
    f"b--abcdefghij@{BOUNCES}",
    f"b-12-abcdefghijk@{BOUNCES}",
    f"b-12-abcdefgh1j@{BOUNCES}",
    "",
    "<>",
    BOUNCES,
])
def test_an_address_that_is_not_a_return_path_of_ours_maps_to_nothing(address: str) -> None:
    assert parse_return_path(CONFIG, address) is None
