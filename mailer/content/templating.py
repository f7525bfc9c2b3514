"""Jinja2 environments for campaign and layout templates, template loading, text from HTML."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from inscriptis import get_text
from inscriptis.css_profiles import CSS_PROFILES
from inscriptis.model.config import ParserConfig
from jinja2 import meta

from mailer.content.sandbox import MAX_RENDER_SECONDS, BoundedSandbox, RenderTimeout, render_bounded
from mailer.errors import TemplateError, path_text
from mailer.resources import resource_path

HTML_SUFFIXES = (".html.j2", ".html")
TEXT_SUFFIXES = {".html.j2": ".txt.j2", ".html": ".txt"}
MAX_TEMPLATE_BYTES = 1_000_000  # a campaign is an email, not a book; bigger is a mistake
_FULL_DOCUMENT = re.compile(r"<html[\s>]", re.IGNORECASE)
_COMMENTS = re.compile(r"<!--.*?(?:-->|$)|\{#.*?(?:#\}|$)", re.DOTALL)


@dataclass(frozen=True)
class TemplateSource:
    """A campaign template as stored in the database: its name and the text of both parts."""

    name: str
    html: str
    text: str | None  # None: the text part is derived from the HTML


def templates_dir() -> Path:
    return resource_path("templates")


def campaign_templates_dir() -> Path:
    return templates_dir() / "campaigns"


def shipped_campaign_templates() -> list[str]:
    """Names of the example campaigns under templates/campaigns/."""
    folder = campaign_templates_dir()
    if not folder.is_dir():
        return []
    return sorted(p.name.removesuffix(".html.j2") for p in folder.glob("*.html.j2"))


def load_template_source(spec: str) -> TemplateSource:
    """Read a campaign template from a path to an .html.j2 file, or a name under templates/campaigns/.

    A sibling `.txt.j2` of the same stem becomes the text part. Raises TemplateError when the
    file does not exist or cannot be read, or does not parse.
    """
    path = Path(spec).expanduser()
    if not path.is_file():
        named = _find_named(spec)
        if named is None:
            shipped = ", ".join(shipped_campaign_templates()) or "none"
            raise TemplateError(
                f"template {spec!r} not found: give a path to an .html.j2 file or one of the "
                f"shipped names ({shipped})"
            )
        path = named
    name = path.name if path.parent != campaign_templates_dir() else path.name.removesuffix(".html.j2")
    return read_template_source(path, name)


def read_template_source(path: Path, name: str) -> TemplateSource:
    """The template in an .html.j2 file with its sibling .txt.j2 as the text part, if there is one.

    Raises TemplateError when a file cannot be read or the template does not parse.
    """
    html = read_template_file(path)
    text_path = _sibling_text(path)
    text = read_template_file(text_path) if text_path is not None and text_path.is_file() else None
    source = TemplateSource(name=path_text(name), html=html, text=text)
    compile_campaign_templates(source)
    return source


def _find_named(name: str) -> Path | None:
    return find_named_template(name, campaign_templates_dir())


def find_named_template(name: str, folder: Path) -> Path | None:
    """The HTML template a bare name means in `folder` ("welcome" or "welcome.html.j2"), or None;
    a name with a path separator or a leading dot means nothing there."""
    if "/" in name or "\\" in name or name.startswith("."):
        return None
    for candidate in (folder / f"{name}.html.j2", folder / name):
        if candidate.is_file() and candidate.name.endswith(HTML_SUFFIXES):
            return candidate
    return None


def _sibling_text(path: Path) -> Path | None:
    for html_suffix, text_suffix in TEXT_SUFFIXES.items():
        if path.name.endswith(html_suffix):
            return path.with_name(path.name.removesuffix(html_suffix) + text_suffix)
    return None


def read_template_file(path: Path) -> str:
    """A template file's text; raises TemplateError when unreadable, too big or not UTF-8."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TemplateError(f"cannot read template {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_TEMPLATE_BYTES:
        raise TemplateError(f"template {path} is larger than {MAX_TEMPLATE_BYTES} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise TemplateError(f"template {path} is not UTF-8 text") from None


@functools.cache
def campaign_environment(html: bool) -> jinja2.Environment:
    """The sandbox campaign templates run in: autoescaped for HTML, undefined names are errors.

    Campaign templates are data from the database, so they run sandboxed and cannot reach
    Python internals through attribute access, nor build values or output without bound.
    """
    return BoundedSandbox(
        autoescape=html,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        auto_reload=False,
    )


@functools.cache
def layout_environment() -> jinja2.Environment:
    """Loads the system's own layout and footer templates from templates/email/."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir() / "email")),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html", "html.j2"), default=False),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        auto_reload=False,
    )


def compile_template(source: str, *, html: bool, label: str) -> jinja2.Template:
    """Parse a campaign template once; raises TemplateError with the line that does not parse."""
    try:
        return campaign_environment(html).from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"{label} does not parse: line {exc.lineno}: {exc.message}") from None
    except RecursionError:
        raise TemplateError(f"{label} does not parse: it is nested too deeply") from None


def compile_campaign_templates(source: TemplateSource) -> tuple[jinja2.Template, jinja2.Template | None]:
    """Both parts of a campaign compiled; raises TemplateError."""
    html = compile_template(source.html, html=True, label=f"HTML template {source.name}")
    text = None
    if source.text is not None:
        text_name = source.name
        for html_suffix, text_suffix in TEXT_SUFFIXES.items():
            if text_name.endswith(html_suffix):  # name the file the marketer has to fix
                text_name = text_name.removesuffix(html_suffix) + text_suffix
                break
        text = compile_template(source.text, html=False, label=f"text template {text_name}")
    return html, text


def referenced_names(source: str, *, html: bool) -> set[str]:
    """The top-level variables a template refers to, in any branch."""
    env = campaign_environment(html)
    try:
        return set(meta.find_undeclared_variables(env.parse(source)))
    except jinja2.TemplateSyntaxError:
        return set()


def render_template(template: jinja2.Template, context: Mapping[str, Any], *, label: str) -> str:
    """Render; an undefined variable, a failing filter, a sandbox refusal or a runaway raises TemplateError.

    A runaway is a render past the sandbox's time, value or output limits.
    """
    try:
        return render_bounded(template, context)
    except RenderTimeout:
        raise TemplateError(
            f"{label}: rendering took longer than {MAX_RENDER_SECONDS:g} seconds; "
            "a loop in the template runs away"
        ) from None
    except RecursionError:
        raise TemplateError(f"{label}: a macro calls itself without end") from None
    except MemoryError:
        raise TemplateError(f"{label}: rendering ran out of memory; the template builds a runaway value") from None
    except jinja2.UndefinedError as exc:
        raise TemplateError(f"{label}: undefined variable: {exc.message}") from None
    except jinja2.TemplateError as exc:
        raise TemplateError(f"{label}: {exc.message or exc}") from None
    except (TypeError, ValueError, ArithmeticError, LookupError, AttributeError) as exc:
        raise TemplateError(f"{label}: {type(exc).__name__}: {exc}") from None


def is_full_document(html: str) -> bool:
    """True when a template brings its own <html> document rather than a body fragment."""
    # an <html> mentioned in a comment makes no document: the fragment still needs the layout
    return _FULL_DOCUMENT.search(_COMMENTS.sub("", html)) is not None


def html_to_text(html: str) -> str:
    """The plain-text equivalent of an HTML body, for the text/plain part (inscriptis)."""
    return str(get_text(html, _TEXT_CONFIG)).strip() + "\n"


# strict: only what a browser would show (display:none preheaders stay out); links inline as
# "[text](url)" so the text part reads like the HTML one without a reference list at the end
_TEXT_CONFIG = ParserConfig(css=CSS_PROFILES["strict"], display_links=True)
