"""`GET /assets/web.css`: the one same-origin stylesheet every page uses."""

from __future__ import annotations

import functools

from flask import Blueprint, Response

from mailer.resources import resource_path

assets = Blueprint("assets", __name__)


@assets.route("/assets/web.css", methods=["GET"])
def stylesheet() -> Response:
    response = Response(_stylesheet_text(), mimetype="text/css")
    response.headers["Cache-Control"] = "public, max-age=86400"
    return response


@functools.cache
def _stylesheet_text() -> str:
    return (resource_path("templates") / "web" / "web.css").read_text(encoding="utf-8")
