"""Measures message composition: this project's Composer against one EmailMessage per recipient.

Both build the same personalized ~8 KB HTML + text campaign with the footer, the
List-Unsubscribe headers and a signed token per recipient, in the same run, without and
with DKIM (the baseline signs with dkimpy, the Composer with OpenSSL through cryptography).
Every Composer message is parsed and checked afterwards (COMPLIANCE 1, 5, 8, 11-13; the DKIM
ones verified with dkimpy), outside the timing.

    $ python benchmarks/compose.py --messages 5000
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from collections.abc import Callable
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from pathlib import Path

import dkim
import jinja2
from markupsafe import Markup

from mailer.config import Config, config_from_dict
from mailer.content.compliance import check_message
from mailer.content.compose import Composer, Recipient, RenderedMessage
from mailer.content.containment import CONTAINER_ID, CONTAINER_STYLE
from mailer.content.dkim import generate_key
from mailer.content.templating import layout_environment
from mailer.models import Campaign, CampaignKind, MailingList
from mailer.tokens import make_preferences_token, make_unsubscribe_token
from mailer.verp import make_return_path

TARGET_RATIO = 10.0  # without DKIM, against the EmailMessage baseline
TARGET_DKIM_RATE = 1_000.0  # messages per second with DKIM

SECTION = """
<tr><td style="padding:0 0 16px;">
  <div style="padding:16px 18px;border:1px solid #e5e7eb;border-radius:8px;">
    <h2 style="margin:0 0 6px;font-size:18px;color:#0f766e;">Story {n}: notes from the studio</h2>
    <p style="margin:0;">How we recorded a string quartet in a lighthouse, what went wrong with the
    microphones, and the three things we would do differently. Subscribers in {{{{ subscriber.attributes.city }}}}
    get tickets a week early &mdash; café concerts, ¡fiesta!, and more.</p>
  </div>
</td></tr>"""
HTML = (
    "<h1 style=\"margin:0 0 12px;font-size:28px;\">Welcome aboard, {{ subscriber.name }}!</h1>\n"
    "<p>Thanks for reading {{ campaign.list_title }}.</p>\n<table role=\"presentation\" width=\"100%\">"
    + "".join(SECTION.format(n=n) for n in range(1, 13))
    + "\n</table>\n<p><a href=\"https://harmonymails.com/workshops\">See the workshops</a></p>\n"
)
TEXT = (
    "Welcome aboard, {{ subscriber.name }}!\n\nThanks for reading {{ campaign.list_title }}.\n\n"
    + "".join(
        f"* Story {n}: notes from the studio. How we recorded a string quartet in a lighthouse,\n"
        "  what went wrong with the microphones, and the three things we would do differently.\n"
        "  Subscribers in {{ subscriber.attributes.city }} get tickets a week early: café concerts.\n\n"
        for n in range(1, 13)
    )
    + "See the workshops: https://harmonymails.com/workshops\n"
)
CITIES = ["Lisbon", "Laguna Beach", "Zürich", "Osaka", "São Paulo", "Nairobi"]


def recipients(count: int) -> list[Recipient]:
    since = dt.datetime(2025, 5, 17, tzinfo=dt.UTC)
    return [
        Recipient(delivery_id=1000 + i, subscriber_id=1 + i, email=f"person{i}@example{i % 97}.com",
                  name=f"Person Nº{i}", attributes={"city": CITIES[i % len(CITIES)]}, subscribed_at=since)
        for i in range(count)
    ]


def campaign() -> tuple[Campaign, MailingList]:
    return (
        Campaign(id=42, kind=CampaignKind.CAMPAIGN, list_id=3, subject="Spring at Harmony: café concerts",
                 from_address="Harmony Mails <news@harmonymails.com>", template_name="bench",
                 html_template=HTML, text_template=TEXT, notice_reason=""),
        MailingList(id=3, name="news", title="Harmony News"),
    )


def _columns(row: Campaign) -> dict[str, object]:
    return {c: getattr(row, c) for c in ("id", "kind", "list_id", "subject", "from_address", "template_name",
                                        "html_template", "text_template", "notice_reason")}


class Baseline:
    """The straightforward way: Jinja renders everything per recipient, EmailMessage builds the MIME."""

    def __init__(self, config: Config, signer_key: bytes | None) -> None:
        env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
        text_env = jinja2.Environment(autoescape=False, undefined=jinja2.StrictUndefined)
        self.html = env.from_string(HTML)
        self.text = text_env.from_string(TEXT)
        layouts = layout_environment()
        self.html_layout = layouts.get_template("layout.html.j2")
        self.text_layout = layouts.get_template("layout.txt.j2")
        self.config = config
        self.key = signer_key

    def render(self, recipient: Recipient) -> bytes:
        config = self.config
        token = make_unsubscribe_token(config.unsubscribe.secret_keys, recipient.subscriber_id, 3, 42)
        url = f"{config.unsubscribe.base_url}/u/{token}"
        preferences = make_preferences_token(config.unsubscribe.secret_keys, recipient.subscriber_id)
        context = {
            "subscriber": recipient, "unsubscribe_url": url,
            "preferences_url": f"{config.unsubscribe.base_url}/p/{preferences}",
            "campaign": {"list_title": "Harmony News"},
            "company": config.company, "subject": "Spring at Harmony: café concerts", "notice": False,
            "notice_reason": "", "ad_label": config.compliance.ad_label, "list_title": "Harmony News",
            "recipient_email": recipient.email, "subscribed_on": " on 17 May 2025",
            # the baseline skips containing the template: the ratio shows what the Composer's costs
            "document": False, "container_id": CONTAINER_ID, "container_style": CONTAINER_STYLE,
            "template_css": "", "view_in_browser_url": "",
        }
        html = self.html_layout.render({**context, "body": Markup(self.html.render(context))})
        text = self.text_layout.render({**context, "body": self.text.render(context)})
        message = EmailMessage(policy=SMTP)
        message["From"] = "Harmony Mails <news@harmonymails.com>"
        message["To"] = f"{recipient.name} <{recipient.email}>"
        message["Subject"] = "Spring at Harmony: café concerts"
        message["Date"] = format_datetime(dt.datetime.now(dt.UTC))
        message["Message-ID"] = f"<campaign-42.subscriber-{recipient.subscriber_id}@harmonymails.com>"
        message["List-Id"] = "Harmony News <news.harmonymails.com>"
        message["List-Unsubscribe"] = f"<{url}>, <mailto:unsubscribe@harmonymails.com?subject=unsubscribe%20{token}>"
        message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        message.set_content(text, cte="quoted-printable")
        message.add_alternative(html, subtype="html", cte="quoted-printable")
        data = message.as_bytes()
        make_return_path(config, recipient.delivery_id)
        if self.key is not None:
            data = dkim.sign(
                data, b"hm1", b"harmonymails.com", self.key,
                include_headers=[b"from", b"to", b"subject", b"date", b"message-id", b"mime-version",
                                 b"content-type", b"list-unsubscribe", b"list-unsubscribe-post"],
            ) + data
        return data


def rate(build: Callable[[Recipient], object], people: list[Recipient]) -> tuple[float, list[object]]:
    started = time.perf_counter()
    out = [build(person) for person in people]
    return len(people) / (time.perf_counter() - started), out


def check_all(config: Config, messages: list[object], record_value: bytes | None) -> None:
    """Every Composer message must pass the checks; DKIM ones must verify (a sample: dkimpy is slow)."""
    for index, rendered in enumerate(messages):
        assert isinstance(rendered, RenderedMessage)
        problems = check_message(config, rendered)
        if problems:
            raise SystemExit(f"message {index} fails: {problems}")
        if record_value is not None and index % 50 == 0:
            ok = dkim.verify(rendered.data, dnsfunc=lambda name, timeout=5: record_value)
            if not ok:
                raise SystemExit(f"message {index}: DKIM does not verify")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000, help="messages per Composer run")
    parser.add_argument("--baseline-messages", type=int, default=500, help="messages per baseline run")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        key_path = Path(tmp) / "hm1.pem"
        record = generate_key(key_path, "harmonymails.com", "hm1")
        secrets = {"secret_keys": ["benchmark-signing-key-0123456789"]}
        plain = config_from_dict({"unsubscribe": secrets})
        signed = config_from_dict({"unsubscribe": secrets, "dkim": {
            "domain": "harmonymails.com", "selector": "hm1", "private_key": str(key_path)}})
        people = recipients(args.messages)
        few = people[: args.baseline_messages]
        the_campaign, the_list = campaign()

        print(f"composing a {len(HTML):,}-character HTML + {len(TEXT):,}-character text campaign, "
              f"personalized per recipient")
        results = {}
        for label, config, key in (("without DKIM", plain, None), ("with DKIM", signed, key_path.read_bytes())):
            composer = Composer(config, the_campaign, the_list)
            ours, messages = rate(composer.render, people)
            base, _ = rate(Baseline(config, key).render, few)
            size = sum(len(m.data) for m in messages if isinstance(m, RenderedMessage)) / len(messages)
            check_all(config, messages, record.value.encode() if key else None)
            results[label] = (ours, base)
            print(f"{label:>13}: Composer {ours:8,.0f} msg/s   EmailMessage baseline {base:6,.0f} msg/s   "
                  f"ratio {ours / base:5.1f}x   ({len(messages):,} messages of {size:,.0f} bytes, all checked)")

        html_only = Composer(plain, Campaign(**{**_columns(the_campaign), "text_template": None}), the_list)
        derived, _ = rate(html_only.render, people[:1000])
        print(f"{'HTML only':>13}: Composer {derived:8,.0f} msg/s   (text part derived from the HTML, "
              f"personalized)")

    ours, base = results["without DKIM"]
    dkim_rate = results["with DKIM"][0]
    ok_ratio = ours / base >= TARGET_RATIO
    ok_dkim = dkim_rate >= TARGET_DKIM_RATE
    print(f"target without DKIM: >= {TARGET_RATIO:.0f}x baseline: {'met' if ok_ratio else 'NOT met'} "
          f"({ours / base:.1f}x)")
    print(f"target with DKIM: >= {TARGET_DKIM_RATE:,.0f} msg/s: {'met' if ok_dkim else 'NOT met'} "
          f"({dkim_rate:,.0f} msg/s)")
    return 0 if ok_ratio and ok_dkim else 1


if __name__ == "__main__":
    sys.exit(main())
