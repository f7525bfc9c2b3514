"""`GET /archive`, `/archive/<id>` and `/archive/feed`: published campaigns, with no one's data in them."""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET

from flask import Blueprint, Response, abort, make_response, render_template, url_for

from mailer.archive import ArchiveEntry, archive_entries, archived_campaign
from mailer.errors import NotFoundError
from mailer.web.context import web_context

archive_pages = Blueprint("archive", __name__)

ATOM = "http://www.w3.org/2005/Atom"
# a published campaign is the marketer's email as sent: its inline styles and its images
# (wherever the marketer put them) are allowed here, and still no script, frame or form elsewhere
ARCHIVE_CSP = (
    "default-src 'none'; style-src 'self' 'unsafe-inline'; img-src 'self' https: data:; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


def _public(response: Response) -> Response:
    # nothing personal on these pages: caches may keep them a while, search engines may list them
    response.headers["Cache-Control"] = "public, max-age=300"
    response.headers["X-Robots-Tag"] = "all"
    return response


@archive_pages.route("/archive", methods=["GET"])
def archive_index() -> Response:
    with web_context().read_session() as session:
        entries = archive_entries(session)
    return _public(make_response(render_template("web/archive.html", entries=entries)))


@archive_pages.route("/archive/<int:campaign_id>", methods=["GET"])
def archive_item(campaign_id: int) -> Response:
    context = web_context()
    try:
        with context.read_session() as session:
            archived = archived_campaign(session, context.config, campaign_id)
    except NotFoundError:
        abort(404)
    response = make_response(render_template("web/archive_item.html", archived=archived))
    response.headers["Content-Security-Policy"] = ARCHIVE_CSP
    return _public(response)


@archive_pages.route("/archive/feed", methods=["GET"])
def archive_feed() -> Response:
    """An Atom feed of the archive, newest first."""
    context = web_context()
    with context.read_session() as session:
        entries = archive_entries(session)
    base = context.config.unsubscribe.base_url.rstrip("/")
    feed = ET.Element("feed", xmlns=ATOM)
    ET.SubElement(feed, "title").text = f"{context.config.company.name}: newsletter archive"
    ET.SubElement(feed, "id").text = f"{base}{url_for('archive.archive_index')}"
    ET.SubElement(feed, "link", rel="self", href=f"{base}{url_for('archive.archive_feed')}")
    ET.SubElement(feed, "link", rel="alternate", type="text/html", href=f"{base}{url_for('archive.archive_index')}")
    ET.SubElement(ET.SubElement(feed, "author"), "name").text = context.config.company.name
    newest = entries[0].sent_at if entries else dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    ET.SubElement(feed, "updated").text = _rfc3339(newest)
    for entry in entries:
        _feed_entry(feed, entry, base)
    body = ET.tostring(feed, encoding="utf-8", xml_declaration=True)
    return _public(Response(body, mimetype="application/atom+xml"))


def _feed_entry(feed: ET.Element, entry: ArchiveEntry, base: str) -> None:
    url = f"{base}{url_for('archive.archive_item', campaign_id=entry.id)}"
    item = ET.SubElement(feed, "entry")
    ET.SubElement(item, "title").text = entry.subject
    ET.SubElement(item, "id").text = url
    ET.SubElement(item, "link", rel="alternate", type="text/html", href=url)
    ET.SubElement(item, "updated").text = _rfc3339(entry.sent_at)
    if entry.list_title:
        ET.SubElement(item, "summary").text = entry.list_title


def _rfc3339(moment: dt.datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
