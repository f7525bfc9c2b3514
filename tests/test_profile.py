"""merge_profile: the one rule for how subscriber add, import and update change a name and attributes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mailer.recipients.subscribers import merge_profile

_keys = st.sampled_from(["city", "plan", "lang", "team"])
_attributes = st.dictionaries(_keys, st.sampled_from(["", "Oslo", "pro", "nb"]), max_size=4)


def test_a_new_value_replaces_and_others_stay() -> None:
    change = merge_profile("Ana", {"city": "Oslo", "plan": "free"}, "Ana B", {"plan": "pro"}, ["city"])
    assert change.name == "Ana B"
    assert change.attributes == {"plan": "pro"}
    assert change.changed == ["name", "attribute city removed", "attribute plan"]


def test_no_name_keeps_the_name_and_the_same_values_change_nothing() -> None:
    change = merge_profile("Ana", {"city": "Oslo"}, None, {"city": "Oslo"}, ["lang"])
    assert (change.name, change.attributes, change.changed) == ("Ana", {"city": "Oslo"}, [])


@settings(max_examples=150)
@given(name=st.sampled_from(["", "Ana"]), new_name=st.sampled_from([None, "", "Ana", "Ben"]),
       held=_attributes, new=_attributes, removing=st.lists(_keys, max_size=3))
def test_the_merge_is_the_held_values_less_the_removed_plus_the_new(
    name: str, new_name: str | None, held: dict[str, str], new: dict[str, str], removing: list[str]
) -> None:
    # a key is either set or removed in one update (`--attr city=` and `--attr city=Oslo` leave the last)
    removing = [key for key in removing if key not in new]
    before = dict(held)
    change = merge_profile(name, held, new_name, new, removing)
    expected = {k: v for k, v in held.items() if k not in removing} | new
    assert change.attributes == expected
    assert change.name == (name if new_name is None else new_name)
    # something is reported changed exactly when the profile differs from the one held
    assert bool(change.changed) == ((change.name, change.attributes) != (name, held))
    assert held == before  # the caller's mapping is left as it was
