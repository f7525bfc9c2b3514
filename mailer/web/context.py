"""What every page shares: the app's config and database, security headers, the error page."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, cast

from flask import Response, current_app, render_template, request
from sqlalchemy.orm import Session
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from mailer.config import Config
from mailer.db import Database

# pages use one same-origin stylesheet and no script; forms post back to us only
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
# real tokens are under 100 characters; anything far longer is not worth an HMAC
MAX_TOKEN_CHARS = 512
SECURITY_HEADERS = {
    # the token in the URL must never travel to another site
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "X-Robots-Tag": "noindex, nofollow",
}


@dataclass
class WebContext:
    """What every request needs: the config, the database, and the writers' turnstile."""

    config: Config
    database: Database
    # SQLite takes one writer at a time; queueing threads here is fair and fast, while letting
    # them collide in SQLite's busy handler sleeps them for up to 100 ms at a time
    _write_lock: threading.Lock = field(default_factory=threading.Lock)

    @contextmanager
    def write_session(self) -> Iterator[Session]:
        """A session for a write transaction that commits on success."""
        with self._write_lock if self.database.is_sqlite else nullcontext(), self.database.session() as session:
            yield session

    @contextmanager
    def read_session(self) -> Iterator[Session]:
        """A session for reads; on SQLite it takes no write lock, so pages never wait on writers."""
        with self.database.engine.connect() as conn:
            # db.make_engine opens SQLite transactions with BEGIN IMMEDIATE unless told otherwise;
            # the flag lives on the pooled connection, so it is taken off before the pool gets it back
            conn.info["write"] = False
            try:
                with Session(bind=conn) as session:
                    yield session
            finally:
                conn.info.pop("write", None)


def web_context() -> WebContext:
    """The WebContext of the app handling the current request (for blueprints too)."""
    return cast(WebContext, current_app.extensions["mailer"])


def client_ip() -> str | None:
    """The requester's address as the record of a consent or an opt-out keeps it.

    Behind a trusted proxy this is already the recipient's, not the proxy's: waitress or
    ProxyFix (see create_app) rewrote it from X-Forwarded-For.
    """
    return request.remote_addr


def client_user_agent() -> str | None:
    return request.user_agent.string or None


def page_context() -> dict[str, Any]:
    config = web_context().config
    return {"company": config.company, "unsubscribe_mailto": config.unsubscribe.mailto}


def add_security_headers(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    # pages carry a token in their URL: no cache anywhere may keep them
    response.headers.setdefault("Cache-Control", "no-store")
    if request.is_secure:
        # once over https (directly, or a trusted proxy's X-Forwarded-Proto), never again in clear
        response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    return response


def error_page(error: HTTPException) -> tuple[str, int, dict[str, str]]:
    code = error.code or 500
    headers: dict[str, str] = {}
    if isinstance(error, MethodNotAllowed) and error.valid_methods:
        headers["Allow"] = ", ".join(error.valid_methods)
    return render_template("web/error.html", code=code, title=error.name), code, headers
