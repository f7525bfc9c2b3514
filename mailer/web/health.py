"""`GET /healthz`: whether the database answers, for load balancers."""

from __future__ import annotations

import sqlalchemy as sa
from flask import Blueprint

from mailer.web.context import web_context

health_pages = Blueprint("health", __name__)


@health_pages.route("/healthz", methods=["GET"])
def healthz() -> tuple[dict[str, str], int]:
    """For load balancers: 200 when the database answers, 503 when it does not."""
    try:
        with web_context().read_session() as session:
            session.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError:
        return {"status": "database unavailable"}, 503
    return {"status": "ok"}, 200
