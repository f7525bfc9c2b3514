"""A message's bytes: its parts as written or encoded line by line, and its wire form, byte for byte what encoding it whole gives."""

from __future__ import annotations

from pathlib import Path

import pytest
from compose_helpers import (
    dkim_key,
    make_campaign,
    make_config,
    make_recipient,
    parse,
    parts,
    render,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from mailer.content.compose import RenderedMessage
from mailer.content.wire import (
    MAX_LINE,
    QuotedPrintableLines,
    quoted_printable,
    seven_bit,
    smtp_wire,
)

# what makes quoted-printable depend on where a line ends: blanks before the break, a lone dot,
# '=', long lines, CR in every position, text that is not ASCII
TEXTS = st.lists(
    st.one_of(st.text(max_size=90), st.sampled_from(["", ".", " ", "\t", "=", "a \n", ".\n", "x" * 80, "\r",
                                                     "\r\n", "\n", "Zoë \u2028", "é" * 40])),
    max_size=12,
).map("".join)


@settings(max_examples=500, deadline=None)
@given(texts=st.lists(TEXTS, min_size=1, max_size=4))
def test_encoding_line_by_line_is_encoding_the_whole_text(texts: list[str]) -> None:
    lines = QuotedPrintableLines()  # one per campaign: later texts reuse what earlier ones encoded
    for text in texts:
        assert lines.encode(text) == quoted_printable(text)


@pytest.mark.parametrize("body", [
    "<p>plain</p>",
    # lines that begin with a dot, inside and at the start of each part, are doubled on the wire only
    ".starts with a dot\n.\n..two\n<p>\n.x</p>",
])
def test_the_wire_form_is_the_message_dot_stuffed_and_ended(body: str, tmp_path: Path) -> None:
    dkim_key(str(tmp_path))
    for config in (make_config(), make_config(dkim_key=tmp_path / "hm1.pem")):
        message = render(config, make_campaign(html=body, text=body), make_recipient())
        assert message.wire == smtp_wire(message.data)
        assert message.wire.endswith(b"\r\n.\r\n")
        if body.startswith("."):
            assert b"\r\n..starts with a dot" in message.wire and b"\r\n..starts" not in message.data



@pytest.mark.parametrize("data", [b"", b".", b"..\r\n", b"a\nb", b"a\r\n.b\r\n", b".x\r\n"])
def test_any_message_has_its_wire_form(data: bytes) -> None:
    message = RenderedMessage("b-1-x@bounces.example.com", "ana@example.com", "<m@example.com>", data)
    assert message.wire == smtp_wire(data)
    assert message.outgoing.wire == smtp_wire(data)


def test_plain_ascii_in_short_lines_goes_as_written() -> None:
    assert seven_bit("<p style=\"a:b\">x</p>\n  two", "=_hm_0") == b"<p style=\"a:b\">x</p>\r\n  two\r\n"
    assert seven_bit("y" * MAX_LINE + "\n" + "z" * MAX_LINE, "=_hm_0") is not None
    # each of these would change on the way or break the message: quoted-printable then
    for text in ["Zo\u00eb", "a\rb", "a\r\nb", "nul\x00", "y" * (MAX_LINE + 1), "x\n" + "y" * (MAX_LINE + 1),
                 "as --=_hm_0 said"]:
        assert seven_bit(text, "=_hm_0") is None, text


def test_each_part_goes_as_written_when_it_can_and_reads_the_same_either_way() -> None:
    ascii_only = render(recipient=make_recipient(name="Ana Lima"))
    accented = render(recipient=make_recipient(name="Zo\u00eb Lima"))
    plain = parse(ascii_only.data)
    assert [part["Content-Transfer-Encoding"] for part in plain.iter_parts()] == ["7bit", "7bit"]
    assert [part["Content-Transfer-Encoding"] for part in parse(accented.data).iter_parts()] == [
        "quoted-printable", "quoted-printable"]
    assert all(byte < 128 for byte in ascii_only.data + accented.data)
    assert max(len(line) for line in ascii_only.data.split(b"\r\n")) <= MAX_LINE
    text, html = parts(plain)
    other_text, other_html = parts(parse(accented.data))
    assert text.replace("Ana", "Zo\u00eb") == other_text and html.replace("Ana", "Zo\u00eb") == other_html


def test_a_long_line_is_encoded_each_time_and_never_kept() -> None:
    # a template can write a line of a million characters per recipient; the campaign's table
    # of encoded lines keeps only lines that can recur, so it stays small
    lines = QuotedPrintableLines()
    for n in range(20):
        text = f"caf\u00e9 {n}\n" + f"x{n}=" * 50_000 + "\nthe same last line\n"
        assert lines.encode(text) == quoted_printable(text)
    assert max(len(line) for line in lines._lines) <= MAX_LINE
