"""What a reader sees of a finished message: its parts, and the visible text and links of its HTML."""

from __future__ import annotations

import email.parser
import email.policy
import re
from email.message import EmailMessage

from selectolax.lexbor import LexborHTMLParser, LexborNode

from mailer.content.containment import CONTAINER_ID

# content of these never shows as text in a mail client
_HIDDEN_TAGS = frozenset({"head", "title", "script", "style", "template", "noscript", "textarea",
                          "select", "iframe", "object", "svg", "noembed", "noframes"})
_INLINE_HIDDEN = re.compile(r"display\s*:\s*none", re.IGNORECASE)
_HTML_TAG = re.compile(r"<html[\s>]", re.IGNORECASE)
_COMMENT = re.compile(r"<!--.*?(?:--!?>|$)", re.DOTALL)
FOOTER_CLASS = "hm-footer"


def parse_message(data: bytes) -> EmailMessage:
    """A message as a standards-following reader parses it."""
    parsed = email.parser.BytesParser(policy=email.policy.default).parsebytes(data)
    assert isinstance(parsed, EmailMessage)
    return parsed


def message_parts(message: EmailMessage) -> tuple[str, str]:
    """The decoded text/plain and text/html parts with LF line ends ('' when missing)."""
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    # quoted-printable decodes to the CRLF line ends of the wire; readers see lines
    return (
        str(text.get_content()).replace("\r\n", "\n") if isinstance(text, EmailMessage) else "",
        str(html.get_content()).replace("\r\n", "\n") if isinstance(html, EmailMessage) else "",
    )


class VisibleHtml:
    """The text and link targets a reader can see: no head, comments, or hidden elements."""

    def __init__(self, text: str, hrefs: set[str], has_html_tag: bool) -> None:
        self.text = text
        self.hrefs = hrefs
        self.has_html_tag = has_html_tag  # an <html> start tag, not one in a comment

    @classmethod
    def read(cls, html: str) -> VisibleHtml:
        document = LexborHTMLParser(html)
        chunks: list[str] = []
        hrefs: set[str] = set()
        if document.body is not None:
            _visible(document.body, chunks, hrefs)
        has_html_tag = _HTML_TAG.search(_COMMENT.sub("", html)) is not None
        return cls(" ".join(" ".join(chunks).split()), hrefs, has_html_tag)


class FooterHtml:
    """The system's footer in a finished HTML part: after the campaign's box, outside it."""

    def __init__(self, found: bool, text: str, hrefs: set[str]) -> None:
        self.found = found
        self.text = text
        self.hrefs = hrefs

    @classmethod
    def read(cls, html: str) -> FooterHtml:
        document = LexborHTMLParser(html)
        box = document.css_first(f"#{CONTAINER_ID}")
        for footer in document.css(f"div.{FOOTER_CLASS}"):
            if box is None or _inside(footer, box):
                continue
            chunks: list[str] = []
            hrefs: set[str] = set()
            _visible(footer, chunks, hrefs)
            return cls(True, " ".join(" ".join(chunks).split()), hrefs)
        return cls(False, "", set())


def _inside(node: LexborNode, ancestor: LexborNode) -> bool:
    parent = node.parent
    while parent is not None:
        if parent.mem_id == ancestor.mem_id:
            return True
        parent = parent.parent
    return False


def _visible(root: LexborNode, chunks: list[str], hrefs: set[str]) -> None:
    """Text and link targets under root, leaving out elements a reader does not see; iterative for deep trees."""
    stack = [root]
    while stack:
        node = stack.pop()
        tag = node.tag or ""
        if tag == "-text":
            chunks.append(node.text_content or "")
            continue
        if tag.startswith("-") or tag in _HIDDEN_TAGS:
            continue
        attributes = node.attributes
        if "hidden" in attributes or _INLINE_HIDDEN.search(attributes.get("style") or ""):
            continue
        if tag == "a" and attributes.get("href"):
            hrefs.add(attributes["href"] or "")
        chunks.append(" ")
        stack.extend(reversed(list(node.iter(include_text=True))))
