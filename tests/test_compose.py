"""Campaign messages as a recipient's mail system receives them: COMPLIANCE 1-8, 10-13 on the real bytes."""

from __future__ import annotations

import datetime as dt
import email.utils
import re
from email.header import decode_header, make_header

import pytest
from compose_helpers import (
    HTML,
    make_campaign,
    make_config,
    make_list,
    make_recipient,
    parse,
    parts,
    render,
    token_of,
)

from mailer.content import sandbox
from mailer.content.compliance import VisibleHtml, check_message
from mailer.content.compose import Composer, RenderedMessage
from mailer.content.templating import compile_template, html_to_text, render_template
from mailer.errors import InvalidInputError, TemplateError, TokenError
from mailer.models import CampaignKind
from mailer.tokens import read_unsubscribe_token
from mailer.verp import parse_return_path

POSTAL = "1968 S Coast HWY #2045, Laguna Beach, California 92651, United States"
ONCE = ("From", "To", "Subject", "Date", "Message-ID", "MIME-Version",
        "List-Unsubscribe", "List-Unsubscribe-Post", "List-Id", "Content-Type")


def test_message_parses_cleanly_with_each_header_once() -> None:
    rendered = render()
    message = parse(rendered.data)
    assert message.defects == []
    for part in message.walk():
        assert part.defects == []
    for name in ONCE:
        assert len(message.get_all(name, [])) == 1, name
    assert message.get_all("Cc") is None and message.get_all("Bcc") is None
    assert message.get_all("Return-Path") is None  # RFC 5321 4.4: the receiving MTA adds it
    assert message.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]
    assert str(message["From"]) == "Harmony Mails <news@harmonymails.com>"
    assert str(message["To"]) == "Ana Lima <ana@example.com>"
    assert message["MIME-Version"] == "1.0"
    assert str(message["List-Id"]) == '"Harmony News" <news.harmonymails.com>'
    assert rendered.recipient == "ana@example.com"
    assert check_message(make_config(), rendered) == []


def test_crlf_only_and_no_line_over_998_octets_even_for_long_unbroken_content() -> None:
    long_html = "<p>" + "ü" * 3000 + "</p><p>" + "x" * 5000 + "</p>" + HTML
    long_text = "é" * 4000 + "\n" + "y" * 4000 + "\r\nend\rnext\n"
    rendered = render(campaign=make_campaign(long_html, long_text))
    data = rendered.data
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert b"\r" not in data.replace(b"\r\n", b"")
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    assert all(byte < 128 for byte in data)  # quoted-printable: 7-bit on the wire
    text, html = parts(parse(data))
    assert "é" * 4000 in text and "y" * 4000 in text
    assert "ü" * 3000 in html and "x" * 5000 in html
    text_part = parse(data).get_body(("plain",))
    assert text_part is not None and text_part["Content-Transfer-Encoding"] == "quoted-printable"


def test_japanese_subject_and_accented_name_are_encoded_and_round_trip() -> None:
    subject = "夏のコンサート：全席20%オフ、今週末まで！ Harmony Mails からのお知らせ"  # noqa: RUF001
    name = "Zoë Ångström-Núñez"
    rendered = render(campaign=make_campaign(subject=subject), recipient=make_recipient(name=name))
    head = rendered.data.split(b"\r\n\r\n", 1)[0]
    assert b"=?utf-8?" in head
    assert head.isascii()
    message = parse(rendered.data)
    assert message.defects == []
    assert str(message["Subject"]) == subject
    assert message["To"].addresses[0].display_name == name
    assert message["To"].addresses[0].addr_spec == "ana@example.com"
    _, html = parts(message)
    assert "<title>" + subject + "</title>" in html


@pytest.mark.parametrize(
    "subject",
    ["=?utf-8?q?Re:_your_order?=", "=?utf-8?b?U1VNTUVSIFNBTEUgTk9X?= today and every day of the summer season",
     "Prices =?x?= ünïcode"],
)
def test_subject_that_looks_like_an_encoded_word_reaches_the_reader_as_typed(subject: str) -> None:
    # the gate judges the subject as typed; a reader decoding it into "Re: ..." would see a fake reply
    message = parse(render(campaign=make_campaign(subject=subject)).data)
    assert message.defects == []
    assert str(message["Subject"]) == subject
    raw = next(v for k, v in message.raw_items() if k == "Subject")
    assert str(make_header(decode_header(raw))) == subject


def test_long_ascii_name_and_names_with_quotes_round_trip() -> None:
    for name in ['Ana "the Voice" Lima', "O'Brien, Pat \\ Co", "A" * 150, "=?utf-8?q?fake?= word"]:
        message = parse(render(recipient=make_recipient(name=name)).data)
        assert message.defects == []
        assert message["To"].addresses[0].display_name == name


def test_long_non_ascii_name_is_split_into_encoded_words_that_decode_exactly() -> None:
    name = "Zoë Ångström-Núñez de la Montaña y Castañeda, 山田太郎"
    data = render(recipient=make_recipient(name=name)).data
    raw = next(v for k, v in parse(data).raw_items() if k == "To")
    # RFC 2047 6.2: blanks between adjacent encoded words are dropped (email.header does that;
    # the newer parser keeps one blank between words, so it cannot judge this case)
    assert raw.count("=?utf-8?b?") > 1
    assert max(len(word) for word in re.findall(r"=\?[^ ]*?\?=", raw)) <= 75
    decoded = str(make_header(decode_header(raw.rpartition("<")[0].strip())))
    assert decoded == name


@pytest.mark.parametrize("field", ["subject", "name", "attribute"])
def test_cr_lf_in_data_never_creates_a_header(field: str) -> None:
    evil = "Hello\r\nBcc: victim@evil.test\r\nX-Injected: 1\n\nbody"
    campaign = make_campaign(subject=evil if field == "subject" else "Spring concerts")
    recipient = make_recipient(
        name=evil if field == "name" else "Ana",
        attributes={"city": evil} if field == "attribute" else {"city": "Lisbon"},
    )
    rendered = render(campaign=campaign, recipient=recipient)
    message = parse(rendered.data)
    assert message.defects == []
    assert message.get_all("Bcc") is None
    assert message.get_all("X-Injected") is None
    names = [k.lower() for k in message]
    assert sorted(names) == sorted(n.lower() for n in ONCE)
    if field == "subject":
        assert str(message["Subject"]) == "Hello Bcc: victim@evil.test X-Injected: 1 body"
    if field == "name":
        assert "\n" not in message["To"].addresses[0].display_name


def test_footer_is_in_both_parts_and_visible() -> None:
    rendered = render()
    text, html = parts(parse(rendered.data))
    url = "https://harmonymails.com/u/" + read_token(rendered)
    visible = VisibleHtml.read(html)
    for part in (text, visible.text):
        flat = " ".join(part.split())
        assert "Advertisement" in flat
        assert "Harmony Mails" in flat
        assert POSTAL in flat
        assert "because you subscribed to Harmony News on 3 March 2026" in flat
        assert "ana@example.com" in flat
    assert url in text and "https://harmonymails.com/privacy" in text
    assert "To unsubscribe, open this link" in text
    assert url in visible.hrefs and "https://harmonymails.com/privacy" in visible.hrefs
    assert "Unsubscribe with one click" in visible.text
    assert re.search(r"<html[\s>]", html)
    # the campaign's own content comes first, then the footer
    assert text.index("Hello Ana Lima") < text.index("Advertisement")


def read_token(rendered: RenderedMessage) -> str:
    message = parse(rendered.data)
    urls = re.findall(r"<([^>]+)>", " ".join(str(message["List-Unsubscribe"]).split()))
    return token_of(urls[0])


def test_list_unsubscribe_https_first_then_mailto_with_the_same_token() -> None:
    config = make_config()
    rendered = render(config)
    message = parse(rendered.data)
    value = " ".join(str(message["List-Unsubscribe"]).split())
    match = re.fullmatch(r"<(https://harmonymails\.com/u/([^>]+))>, <mailto:unsubscribe@harmonymails\.com"
                         r"\?subject=unsubscribe%20([^>]+)>", value)
    assert match is not None, value
    assert match[2] == match[3]
    assert str(message["List-Unsubscribe-Post"]) == "List-Unsubscribe=One-Click"
    text, html = parts(message)
    body_tokens = set(re.findall(r"https://harmonymails\.com/u/([A-Za-z0-9_.-]+)", text + html))
    assert body_tokens == {match[2]}
    claim = read_unsubscribe_token(config.unsubscribe.secret_keys, match[2])
    assert (claim.subscriber_id, claim.list_id, claim.campaign_id) == (11, 3, 7)
    assert "ana" not in match[2].lower() and "example" not in match[2].lower()


def test_token_from_an_old_key_still_verifies_after_rotation() -> None:
    old = render(make_config(secret_keys=("older-compose-key-0123456789abcdef",)))
    token = read_token(old)
    rotated = make_config(secret_keys=("newest-compose-key-0123456789abcd", "older-compose-key-0123456789abcdef"))
    assert read_unsubscribe_token(rotated.unsubscribe.secret_keys, token).subscriber_id == 11
    new_token = read_token(render(rotated))
    assert new_token != token
    # the newest key signs: a config that forgot the old key cannot read the old token
    with pytest.raises(TokenError):
        read_unsubscribe_token(("newest-compose-key-0123456789abcd",), token)


def test_message_id_is_stable_per_subscriber_and_unique_across_subscribers() -> None:
    composer = Composer(make_config(), make_campaign(), make_list())
    first = composer.render(make_recipient(subscriber_id=11, delivery_id=1))
    resend = Composer(make_config(), make_campaign(), make_list()).render(
        make_recipient(subscriber_id=11, delivery_id=2)
    )
    other = composer.render(make_recipient(subscriber_id=12, email="bo@example.com"))
    assert first.message_id == resend.message_id
    assert first.message_id != other.message_id
    assert re.fullmatch(r"<[^<>@\s]+@harmonymails\.com>", first.message_id)
    assert parse(first.data)["Message-ID"] == first.message_id
    other_campaign = render(campaign=make_campaign(campaign_id=8))
    assert other_campaign.message_id != first.message_id


def test_return_path_is_verp_on_the_bounce_domain_and_maps_back() -> None:
    config = make_config()
    rendered = render(config, recipient=make_recipient(delivery_id=98765))
    assert rendered.envelope_from.endswith("@bounces.harmonymails.com")
    assert parse_return_path(config, rendered.envelope_from) == 98765


def test_date_is_rfc5322_and_now() -> None:
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    message = parse(render().data)
    date = email.utils.parsedate_to_datetime(str(message["Date"]))
    assert before <= date <= dt.datetime.now(dt.UTC)


def test_test_mode_marks_the_subject_and_gets_its_own_message_id() -> None:
    real = render()
    test = render(test=True)
    assert str(parse(test.data)["Subject"]) == "[TEST] Spring concerts are here"
    assert test.message_id != real.message_id
    assert render(test=True).message_id != test.message_id


def test_subscriber_data_is_escaped_in_html_and_plain_in_text() -> None:
    recipient = make_recipient(name="<script>alert(1)</script> & Co", attributes={"city": "<b>Porto</b>"})
    text, html = parts(parse(render(recipient=recipient).data))
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; Co" in html
    assert "&lt;b&gt;Porto&lt;/b&gt;" in html
    assert "Hello <script>alert(1)</script> & Co" in text


def test_undefined_variables_are_errors_not_blank_text() -> None:
    with pytest.raises(TemplateError, match="undefined"):
        Composer(make_config(), make_campaign("<p>{{ no_such_thing }}</p>", None), make_list())
    composer = Composer(make_config(), make_campaign("<p>{{ subscriber.attributes.plan }}</p>", None),
                        make_list())
    with pytest.raises(TemplateError, match="plan"):
        composer.render(make_recipient(attributes={}))
    rendered = composer.render(make_recipient(attributes={"plan": "gold"}))
    assert "gold" in parts(parse(rendered.data))[1]


def test_template_syntax_error_names_the_line() -> None:
    with pytest.raises(TemplateError, match="line 2"):
        Composer(make_config(), make_campaign("<p>ok</p>\n{% if %}", None), make_list())


def test_templates_run_sandboxed() -> None:
    campaign = make_campaign("<p>{{ ''.__class__.__mro__[1].__subclasses__() }}</p>", None)
    with pytest.raises(TemplateError):
        Composer(make_config(), campaign, make_list()).render(make_recipient())


def test_html_only_template_gets_an_equivalent_text_part() -> None:
    html = "<h2>Summer concerts</h2><p>Six evenings of <b>music</b>, {{ subscriber.name }}.</p>"
    text, _ = parts(parse(render(campaign=make_campaign(html, None)).data))
    assert "Summer concerts" in text and "Six evenings of music, Ana Lima." in text
    assert "<b>" not in text and "Advertisement" in text


def test_full_document_template_gets_the_footer_inside_its_body() -> None:
    document = ("<!DOCTYPE html><html><head><title>x</title></head><body><p>Own layout</p></body></html>")
    _, html = parts(parse(render(campaign=make_campaign(document, None)).data))
    assert html.count("<html") == 1
    assert html.index("Own layout") < html.index("Advertisement") < html.index("</body>")
    assert check_message(make_config(), render(campaign=make_campaign(document, None))) == []


@pytest.mark.parametrize("mention", ["<!-- pasted from an <html> editor -->", "{# not a <html> document #}"])
def test_fragment_that_only_mentions_an_html_tag_in_a_comment_gets_the_layout(mention: str) -> None:
    # without the layout the HTML part would have no <html> tag (SpamAssassin HTML_MIME_NO_HTML_TAG)
    fragment = mention + "<p>Our autumn recitals start soon.</p>"
    _, html = parts(parse(render(campaign=make_campaign(fragment, None)).data))
    assert '<html lang="en"' in html
    assert VisibleHtml.read(html).has_html_tag


def test_notice_carries_no_ad_label_and_no_list_unsubscribe() -> None:
    notice = make_campaign("<p>We changed our terms on {{ campaign.subject }}.</p>", None,
                           subject="Changes to our terms of service", kind=CampaignKind.NOTICE,
                           notice_reason="you have an account with Harmony Mails")
    rendered = Composer(make_config(), notice, None).render(make_recipient())
    message = parse(rendered.data)
    assert message.defects == []
    assert message.get_all("List-Unsubscribe") is None
    assert message.get_all("List-Unsubscribe-Post") is None
    assert message["Message-ID"].startswith("<notice-7.")
    text, html = parts(message)
    for part in (text, VisibleHtml.read(html).text):
        flat = " ".join(part.split())
        assert "Advertisement" not in flat
        assert POSTAL in flat
        assert "because you have an account with Harmony Mails" in flat
        assert "privacy" in flat.lower()
    assert check_message(make_config(), rendered, notice=True) == []


def test_static_template_is_rendered_once_and_still_personalizes_the_footer() -> None:
    composer = Composer(make_config(), make_campaign("<p>Same for all</p>", "Same for all"), make_list())
    first = composer.render(make_recipient(subscriber_id=1, email="a@example.com"))
    second = composer.render(make_recipient(subscriber_id=2, email="b@example.com", subscribed_at=None))
    text_a, _ = parts(parse(first.data))
    text_b, _ = parts(parse(second.data))
    assert "a@example.com" in text_a and "b@example.com" in text_b
    assert read_token(first) != read_token(second)
    assert "because you subscribed to Harmony News." in " ".join(text_b.split())


def test_addresses_that_cannot_go_in_a_header_are_refused() -> None:
    composer = Composer(make_config(), make_campaign(), make_list())
    for bad in ["ana@example.com\r\nBcc: x@evil.test", "a b@example.com", "<a@example.com>", "josé@example.com"]:
        with pytest.raises(InvalidInputError):
            composer.render(make_recipient(email=bad))
    idn = composer.render(make_recipient(email="ana@bücher.example"))
    assert idn.recipient == "ana@xn--bcher-kva.example"


@pytest.mark.parametrize(
    "html",
    [
        "<h1>Hi {{ subscriber.name }}</h1><p>From {{ subscriber.attributes.city }}, "
        '<a href="{{ unsubscribe_url }}">leave</a> {{ subscriber.email }}</p>',
        "<p>Hi {{ subscriber.name.split()[0] }}</p>"
        '{% if subscriber.attributes.get("vip") %}<p>VIP lounge</p>{% else %}<p>General entry</p>{% endif %}',
        "<p>{{ subscriber.name | upper }} is {{ subscriber.attributes.age + 1 }} next year</p>",
    ],
    ids=["values", "branch-and-filter", "arithmetic"],
)
def test_derived_text_part_is_exactly_the_html_converted_for_every_recipient(html: str) -> None:
    composer = Composer(make_config(), make_campaign(html, None), make_list())
    people = [
        make_recipient(1, "a@example.com", "Ana Lima", {"city": "Lisbon", "vip": "yes", "age": 30}),
        make_recipient(2, "b@example.com", "Bo  *Chen*  ", {"city": "Zürich & <Bern>", "age": 41}),
        make_recipient(3, "c@example.com", "Zoë [x](y) 1.", {"city": "", "vip": "", "age": 7}),
    ]
    for person in people:
        html_body, text_body = composer.campaign_bodies(person)
        assert text_body == html_to_text(html_body)
        text, _ = parts(parse(composer.render(person).data))
        assert text.startswith(text_body.rstrip("\n"))


@pytest.mark.parametrize("expression", [
    "subscriber.attributes.clear()", "subscriber.attributes.update(city='x')", "subscriber.attributes.pop('city')",
    "subscriber.tags.append('x')", "subscriber.name.__class__", "subscriber.name.split.__self__",
    "subscriber.attributes.__class__.mro()",
])
def test_a_template_can_neither_change_subscriber_data_nor_reach_python_internals(expression: str) -> None:
    template = compile_template(f"<p>{{{{ {expression} }}}}</p>", html=True, label="HTML template")
    for _ in range(2):  # the second time the sandbox answers from what it learnt the first
        subscriber = {"name": "Ana Lima", "attributes": {"city": "Lisbon"}, "tags": ["a"]}
        try:
            written = render_template(template, {"subscriber": subscriber}, label="HTML template")
        except TemplateError:
            written = ""
        assert subscriber == {"name": "Ana Lima", "attributes": {"city": "Lisbon"}, "tags": ["a"]}
        assert "class" not in written and "built-in" not in written
    # what does not change anything is still there to use
    allowed = compile_template("{{ subscriber.attributes.get('city') }} {{ subscriber.name.split()[0] }}",
                               html=True, label="t")
    assert render_template(allowed, {"subscriber": subscriber}, label="t") == "Lisbon Ana"


def test_attribute_names_from_data_do_not_pile_up_in_the_sandbox_and_are_still_checked() -> None:
    # `|attr` with a name taken from each subscriber: a worker mailing millions must not keep them all
    template = compile_template("{{ subscriber.name|attr(subscriber.attributes.key) is defined }}", html=True,
                                label="t")
    kept = len(sandbox._SAFE_ATTRIBUTES)
    for number in range(1500):
        subscriber = {"name": "Ana", "attributes": {"key": f"name{number}"}}
        assert render_template(template, {"subscriber": subscriber}, label="t") == "False"
    assert len(sandbox._SAFE_ATTRIBUTES) == kept
    # an internal name is refused, a real method found
    internal = {"name": "Ana", "attributes": {"key": "__class__"}}
    assert render_template(template, {"subscriber": internal}, label="t") == "False"
    assert render_template(template, {"subscriber": {"name": "Ana", "attributes": {"key": "upper"}}},
                           label="t") == "True"
