"""Campaign templates: found by name or path, refused in one line when broken, and a text part that reads like the HTML."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailer.content.templating import (
    campaign_templates_dir,
    compile_template,
    html_to_text,
    load_template_source,
    render_template,
    shipped_campaign_templates,
)
from mailer.errors import TemplateError


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


def test_a_shipped_template_loads_by_name_with_its_text_part() -> None:
    folder = campaign_templates_dir()
    welcome = load_template_source("welcome")
    assert welcome.name == "welcome"
    assert welcome.html == (folder / "welcome.html.j2").read_text(encoding="utf-8")
    assert welcome.text == (folder / "welcome.txt.j2").read_text(encoding="utf-8")
    # announcement ships without a text part: the text is then derived from the HTML
    assert load_template_source("announcement").text is None
    assert "welcome" in shipped_campaign_templates() and "announcement" in shipped_campaign_templates()


def test_a_template_loads_by_path_with_a_sibling_text_part(tmp_path: Path) -> None:
    html = tmp_path / "spring.html.j2"
    html.write_text("<p>Hello {{ subscriber.name }}</p>", encoding="utf-8")
    alone = load_template_source(str(html))
    assert (alone.name, alone.html, alone.text) == ("spring.html.j2", "<p>Hello {{ subscriber.name }}</p>", None)
    (tmp_path / "spring.txt.j2").write_text("Hello {{ subscriber.name }}\n", encoding="utf-8")
    # a text file of another stem is not this template's text part
    (tmp_path / "autumn.txt.j2").write_text("Autumn\n", encoding="utf-8")
    assert load_template_source(str(html)).text == "Hello {{ subscriber.name }}\n"


def test_a_path_wins_over_a_shipped_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "welcome").write_text("<p>my own welcome</p>", encoding="utf-8")
    assert load_template_source("welcome").html == "<p>my own welcome</p>"


@pytest.mark.parametrize("spec", ["nosuch", "nosuch.html.j2", "../campaigns/welcome", "/no/such/dir/x.html.j2"])
def test_a_missing_template_is_a_one_line_error_naming_the_shipped_ones(spec: str) -> None:
    with pytest.raises(TemplateError) as refused:
        load_template_source(spec)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"template {spec!r} not found")
    assert "announcement, welcome" in message


def test_a_template_that_does_not_parse_is_a_one_line_error_with_its_line(tmp_path: Path) -> None:
    html = tmp_path / "broken.html.j2"
    html.write_text("<p>Hello</p>\n<p>{% if subscriber.name %}Hi</p>\n", encoding="utf-8")
    with pytest.raises(TemplateError) as refused:
        load_template_source(str(html))
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("HTML template broken.html.j2 does not parse: line ")
    assert "endif" in message


def test_a_text_part_that_does_not_parse_is_named_as_the_file_to_fix(tmp_path: Path) -> None:
    (tmp_path / "news.html.j2").write_text("<p>Hello</p>", encoding="utf-8")
    (tmp_path / "news.txt.j2").write_text("Hello\n{{ subscriber.name \n", encoding="utf-8")
    with pytest.raises(TemplateError) as refused:
        load_template_source(str(tmp_path / "news.html.j2"))
    assert str(refused.value).startswith("text template news.txt.j2 does not parse: line 2")
    assert "\n" not in str(refused.value)


def test_a_template_that_is_not_utf8_is_refused_in_one_line(tmp_path: Path) -> None:
    html = tmp_path / "latin1.html.j2"
    html.write_bytes("<p>Caf\u00e9</p>".encode("latin-1"))
    with pytest.raises(TemplateError, match=r"^template .*latin1\.html\.j2 is not UTF-8 text$"):
        load_template_source(str(html))


def test_an_undefined_name_is_refused_not_rendered_empty() -> None:
    template = compile_template("<p>Hello {{ subscriber.nmae }}</p>", html=True, label="HTML template news")
    with pytest.raises(TemplateError) as refused:
        render_template(template, {"subscriber": {"name": "Ana"}}, label="HTML template news")
    message = str(refused.value)
    assert message.startswith("HTML template news: undefined variable: ")
    assert "nmae" in message and "\n" not in message
    plain = compile_template("Hello {{ person }}", html=False, label="text template news")
    with pytest.raises(TemplateError, match="undefined variable: 'person' is undefined"):
        render_template(plain, {}, label="text template news")
    assert render_template(plain, {"person": "Ana"}, label="text template news") == "Hello Ana"


def test_a_dotted_name_reads_a_key_unless_a_dict_method_has_that_name() -> None:
    # as in Jinja: `subscriber.name` is the key; `attributes.items` stays the method, even
    # when the subscriber's data has an "items" key
    template = compile_template(
        "{{ subscriber.name }}|{{ subscriber.attributes.city }}|{{ subscriber.attributes.items() | list | length }}"
        "|{{ subscriber.attributes.get('city') }}",
        html=False, label="text template news")
    subscriber = {"name": "Ana", "attributes": {"city": "Faro", "items": "3 records", "get": "x"}}
    assert render_template(template, {"subscriber": subscriber}, label="t") == "Ana|Faro|3|Faro"


def test_methods_of_plain_values_are_called_in_loops_and_blocks_and_stay_bounded() -> None:
    # a call inside a loop or a block carries the names set there; a plain value's method
    # takes none of them, and a method that can grow a value is still measured first
    template = compile_template(
        "{% for p in people %}{{ p.name.split()[0] }},{{ p.attributes.get('city', '-') }};{% endfor %}"
        "{% block shout %}{{ people[0].name.upper() }}{% endblock %}",
        html=False, label="text template news")
    people = [{"name": "Ana Lima", "attributes": {"city": "Faro"}}, {"name": "Bo", "attributes": {}}]
    assert render_template(template, {"people": people}, label="t") == "Ana,Faro;Bo,-;ANA LIMA"
    growing = compile_template("{% for p in people %}{{ p.name.ljust(10 ** 8) | length }}{% endfor %}",
                               html=False, label="text template news")
    with pytest.raises(TemplateError, match="runaway"):
        render_template(growing, {"people": people}, label="text template news")
    mutating = compile_template("{% for p in people %}{{ p.attributes.clear() }}{% endfor %}",
                                html=False, label="text template news")
    with pytest.raises(TemplateError):
        render_template(mutating, {"people": people}, label="text template news")
    assert people[0]["attributes"] == {"city": "Faro"}
