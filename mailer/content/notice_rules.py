"""The rules that make a notice a notice, part of the compliance gate for every notice."""

from __future__ import annotations

import re

from mailer.config import Config
from mailer.content.compose import Composer, sample_recipient
from mailer.content.templating import campaign_templates_dir, read_template_file
from mailer.content.visible import VisibleHtml, message_parts, parse_message
from mailer.errors import MailerError
from mailer.models import Campaign

# the shipped example notices mark each fact the sender must fill in like this
UNFILLED = re.compile(r"\[EDIT\b", re.IGNORECASE)
# the mechanical signs of a sales pitch; a notice informs, it does not sell
PROMOTION = re.compile(
    r"\b(?:\d+\s*%\s*off|discounts?|coupons?|promo(?:tion(?:al)?)?\s+codes?|buy now|shop now|"
    r"order now|limited[- ]time offer|special offers?|free shipping|upgrade now)\b",
    re.IGNORECASE,
)


def _shipped_campaign_sources() -> set[str]:
    folder = campaign_templates_dir()
    if not folder.is_dir():
        return set()
    return {read_template_file(p) for p in folder.glob("*.html.j2")}


def notice_problems(config: Config, notice: Campaign) -> list[str]:
    """What makes a notice a notice: a reason, everyone as audience, no campaign template, no
    promotion, no unfilled example text. The compliance gate adds these for every notice."""
    problems: list[str] = []
    if notice.list_id is not None:
        problems.append("a notice goes to everyone held, not to one list")
    if not notice.notice_reason.strip():
        problems.append("the notice has no reason; it is recorded and shown to every recipient")
    if notice.template_name.startswith("campaigns/") or notice.html_template in _shipped_campaign_sources():
        problems.append("the notice is built from a campaign template")
    try:
        rendered = Composer(config, notice, None).render(sample_recipient())
    except MailerError:
        return problems  # the gate reports why it does not render
    text, html = message_parts(parse_message(rendered.data))
    visible = VisibleHtml.read(html).text
    for part, shown in (("HTML", visible), ("text", text)):
        if UNFILLED.search(shown):
            problems.append(f"the {part} part still has an unfilled [EDIT: ...] marker")
    pitch = PROMOTION.search(text) or PROMOTION.search(visible)
    if pitch:
        problems.append(f"a notice must not promote anything; it says {pitch.group(0)!r}")
    return problems
