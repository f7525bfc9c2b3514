"""`GET /assets/web.css`: the one same-origin stylesheet every page uses."""

from __future__ import annotations

import functools

from flask import Blueprint, Response

from mailer.resources import template_search_path
from mailer.web.context import web_context

assets = Blueprint("assets", __name__)


@assets.route("/assets/web.css", methods=["GET"])
def stylesheet() -> Response:
    response = Response(_stylesheet_text(web_context().config.web.templates_dir), mimetype="text/css")
    response.headers["Cache-Control"] = "public, max-age=86400"
    return response


@functools.cache
def _stylesheet_text(override_dir: str) -> str:
    # the operator's web/web.css, when their template directory has one, else ours
    for directory in template_search_path(override_dir):
        if (directory / "web" / "web.css").is_file():
            return (directory / "web" / "web.css").read_text(encoding="utf-8")
    raise FileNotFoundError("web/web.css is missing from the package")
