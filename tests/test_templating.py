"""The text part derived from an HTML body reads like the HTML a person sees."""

from __future__ import annotations

from mailer.content.templating import html_to_text


def test_derived_text_keeps_links_lists_and_tables_and_drops_hidden_preheaders() -> None:
    html = (
        '<div style="display:none;max-height:0">Preheader only inboxes show</div>'
        "<h1>Summer concerts</h1>"
        "<ul><li>July 4: strings</li><li>July 11: jazz</li></ul>"
        '<p><a href="https://harmonymails.com/concerts">Read the programme</a></p>'
        "<table><tr><td>Friday</td><td>8 pm</td></tr></table>"
    )
    text = html_to_text(html)
    assert "Preheader" not in text
    assert "Summer concerts" in text
    assert "* July 4: strings" in text and "* July 11: jazz" in text
    assert "Read the programme" in text and "https://harmonymails.com/concerts" in text
    assert "Friday" in text and "8 pm" in text
    assert text.endswith("\n") and not text.endswith("\n\n")


def test_derived_text_decodes_entities_and_keeps_non_ascii() -> None:
    text = html_to_text("<p>Caf&eacute; &amp; Zo&euml; &lt;3 &#8212; 東京</p>")
    assert text == "Café & Zoë <3 — 東京\n"
