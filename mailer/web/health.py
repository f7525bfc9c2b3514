"""`GET /healthz` and the database going away: 503 with Retry-After while it is down, one log line
each way, no traceback; pages answer again on their own once it is back (the pool pre-pings)."""

from __future__ import annotations

import threading

import sqlalchemy as sa
from flask import Blueprint, Flask, Response, current_app, render_template

from mailer.web.context import web_context

health_pages = Blueprint("health", __name__)

RETRY_AFTER_SECONDS = 10  # a restart or a failover takes seconds; clients come back soon, not at once

# what a database that is restarting, failing over or unreachable raises; a page never sees the
# traceback, the person a "try again in a minute" page
UNAVAILABLE = (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError)


class DatabaseOutage:
    """Whether the database was last seen down, so that an outage logs one line, not one per request."""

    def __init__(self) -> None:
        self.down = False
        self._lock = threading.Lock()

    def went_down(self, error: Exception) -> None:
        with self._lock:
            was_down, self.down = self.down, True
        if not was_down:
            current_app.logger.warning("database unavailable, answering 503 until it is back: %s", _first_line(error))

    def came_back(self) -> None:
        if not self.down:
            return
        with self._lock:
            was_down, self.down = self.down, False
        if was_down:
            current_app.logger.warning("database answers again")


def _first_line(error: Exception) -> str:
    orig = getattr(error, "orig", None) or error
    lines = str(orig).strip().splitlines()
    return lines[0] if lines else type(orig).__name__


def outage() -> DatabaseOutage:
    return current_app.extensions["mailer_outage"]  # type: ignore[no-any-return]


def _database_answers() -> bool:
    try:
        with web_context().read_session() as session:
            session.execute(sa.text("SELECT 1"))
    except UNAVAILABLE as exc:
        outage().went_down(exc)
        return False
    outage().came_back()
    return True


@health_pages.route("/healthz", methods=["GET"])
def healthz() -> tuple[dict[str, str], int, dict[str, str]]:
    """For load balancers: 200 when the database answers, 503 when it does not."""
    if not _database_answers():
        return {"status": "database unavailable"}, 503, {"Retry-After": str(RETRY_AFTER_SECONDS)}
    return {"status": "ok"}, 200, {}


def database_unavailable(error: Exception) -> tuple[str, int, dict[str, str]]:
    """A page whose database went away mid-request: 503, the error page, and when to come back."""
    outage().went_down(error)
    page = render_template("web/error.html", code=503, title="Service Unavailable")
    return page, 503, {"Retry-After": str(RETRY_AFTER_SECONDS)}


def note_recovery(response: Response) -> Response:
    """While the database is known down, a page that answered shows it is back (one cheap query)."""
    if outage().down and response.status_code < 500:
        _database_answers()
    return response


def watch_database(app: Flask) -> None:
    """Install the outage handling on the app."""
    app.extensions["mailer_outage"] = DatabaseOutage()
    for error in UNAVAILABLE:
        app.register_error_handler(error, database_unavailable)
    app.after_request(note_recovery)
