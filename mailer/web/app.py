"""The recipient's web app: the unsubscribe page, RFC 8058 one-click POSTs and a health check."""

from __future__ import annotations

import functools
import ipaddress
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, cast

import sqlalchemy as sa
from flask import Blueprint, Flask, Response, current_app, render_template, request
from sqlalchemy.orm import Session
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.middleware.proxy_fix import ProxyFix

from mailer.config import Config, UnsubscribeScope, load_config
from mailer.db import Database
from mailer.errors import TokenError
from mailer.models import MailingList, Subscriber, Subscription
from mailer.recipients.optout import OptOutSource, mask_email, unsubscribe
from mailer.resources import resource_path
from mailer.tokens import UnsubscribeClaim, read_unsubscribe_token

# a one-click body is 26 bytes and a multipart one a few hundred; nothing legitimate is bigger
MAX_BODY_BYTES = 16 * 1024
# real tokens are under 100 characters; anything far longer is not worth an HMAC
MAX_TOKEN_CHARS = 512

# pages use one same-origin stylesheet and no script; forms post back to us only
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
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


pages = Blueprint("web", __name__)


def create_app(
    config: Config | None = None,
    test_config: Mapping[str, Any] | None = None,
    *,
    server_reads_proxy_headers: bool = False,
) -> Flask:
    """The WSGI app; `config` defaults to load_config() ($MAILER_CONFIG, then ./mailer.toml).

    `server_reads_proxy_headers`: the WSGI server already turned a trusted proxy's
    X-Forwarded-* into the client's address and scheme (`mailer serve` has waitress do it,
    see waitress_proxy_settings), so the app must not apply them a second time.

    Raises ConfigError when the config is invalid or has no signing key.
    """
    if config is None:
        config = load_config()
    config.require_secret_keys()
    app = Flask(__name__, template_folder=str(resource_path("templates")), static_folder=None)
    app.config.from_mapping(
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        MAX_FORM_MEMORY_SIZE=MAX_BODY_BYTES,
        MAX_FORM_PARTS=20,
    )
    if test_config is not None:
        app.config.from_mapping(test_config)
    app.extensions["mailer"] = WebContext(config, Database.from_config(config))
    hops = config.unsubscribe.trusted_proxies
    if hops and not server_reads_proxy_headers:
        # under another WSGI server (gunicorn...): behind nginx or a load balancer, REMOTE_ADDR is the proxy; the opt-out record wants the recipient
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)  # type: ignore[method-assign]
    app.register_blueprint(pages)
    from mailer.web.confirm import confirm_pages  # imported here: it imports this module

    app.register_blueprint(confirm_pages)
    app.register_error_handler(HTTPException, _error_page)
    app.after_request(_add_security_headers)
    app.context_processor(_page_context)
    return app


def waitress_proxy_settings(config: Config) -> dict[str, Any]:
    """waitress settings that make it believe X-Forwarded-For and -Proto from the configured proxy only.

    waitress, not the app, reads these headers under `mailer serve`: it knows which peer sent
    them, so a client that reaches the port directly cannot claim another address or https,
    while ProxyFix would believe whoever connects. Without a trusted proxy waitress removes the
    headers before the app sees them.
    """
    hops = config.unsubscribe.trusted_proxies
    if not hops:
        return {"clear_untrusted_proxy_headers": True}
    address = config.unsubscribe.trusted_proxy_address
    return {
        # waitress compares the peer's address as text; "::0001" must still match "::1"
        "trusted_proxy": address if address == "*" else str(ipaddress.ip_address(address)),
        "trusted_proxy_count": hops,
        # the Host is not taken from the proxy: links are built from unsubscribe.base_url
        "trusted_proxy_headers": {"x-forwarded-for", "x-forwarded-proto"},
        "clear_untrusted_proxy_headers": True,
    }


def _page_context() -> dict[str, Any]:
    config = web_context().config
    return {"company": config.company, "unsubscribe_mailto": config.unsubscribe.mailto}


def _add_security_headers(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    # pages carry a token in their URL: no cache anywhere may keep them
    response.headers.setdefault("Cache-Control", "no-store")
    if request.is_secure:
        # once over https (directly, or a trusted proxy's X-Forwarded-Proto), never again in clear
        response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    return response


def _error_page(error: HTTPException) -> tuple[str, int, dict[str, str]]:
    code = error.code or 500
    headers: dict[str, str] = {}
    if isinstance(error, MethodNotAllowed) and error.valid_methods:
        headers["Allow"] = ", ".join(error.valid_methods)
    return render_template("web/error.html", code=code, title=error.name), code, headers


def _claim_from(token: str) -> UnsubscribeClaim | None:
    if len(token) > MAX_TOKEN_CHARS:
        return None
    try:
        return read_unsubscribe_token(web_context().config.require_secret_keys(), token)
    except TokenError:
        return None


def _invalid_link() -> tuple[str, int]:
    # the same page for forged, truncated, foreign-key and oversized tokens: nothing to learn from it
    return render_template("web/invalid.html"), 400


@pages.route("/u/<path:token>", methods=["GET"], provide_automatic_options=False)
def unsubscribe_page(token: str) -> tuple[str, int]:
    """One page, one button. Changes nothing: mail scanners fetch every link they see."""
    claim = _claim_from(token)
    if claim is None:
        return _invalid_link()
    context = web_context()
    list_title = ""
    with context.read_session() as session:
        email = session.scalar(sa.select(Subscriber.email).where(Subscriber.id == claim.subscriber_id))
        if email and claim.list_id is not None and context.config.unsubscribe.scope is UnsubscribeScope.LIST:
            # ask about what the button will do: with scope "list", leave this list (when the
            # person is on it; otherwise the POST falls back to everything, and so does the page)
            list_title = session.scalar(
                sa.select(sa.func.coalesce(sa.func.nullif(MailingList.title, ""), MailingList.name))
                .join(Subscription, Subscription.list_id == MailingList.id)
                .where(Subscription.subscriber_id == claim.subscriber_id, MailingList.id == claim.list_id)
            ) or ""
    masked = mask_email(email) if email else ""
    return render_template("web/unsubscribe.html", masked_email=masked, list_title=list_title), 200


@pages.route("/u/<path:token>", methods=["POST"], provide_automatic_options=False)
def unsubscribe_post(token: str) -> tuple[str, int]:
    """RFC 8058 one-click (`List-Unsubscribe=One-Click`) or the page's button: opt out, answer 200."""
    # reading the form first enforces MAX_CONTENT_LENGTH: an oversized body is a 413
    via_page = request.form.get("via") == "page"
    claim = _claim_from(token)
    if claim is None:
        return _invalid_link()
    context = web_context()
    with context.write_session() as session:
        result = unsubscribe(
            session,
            context.config,
            claim,
            OptOutSource.PAGE if via_page else OptOutSource.ONE_CLICK,
            ip=request.remote_addr,
            user_agent=request.user_agent.string or None,
        )
    return render_template(
        "web/unsubscribed.html",
        masked_email=result.masked_email,
        list_only=result.scope is UnsubscribeScope.LIST,
        list_title=result.list_title,
    ), 200


@pages.route("/healthz", methods=["GET"])
def healthz() -> tuple[dict[str, str], int]:
    """For load balancers: 200 when the database answers, 503 when it does not."""
    try:
        with web_context().read_session() as session:
            session.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError:
        return {"status": "database unavailable"}, 503
    return {"status": "ok"}, 200


@pages.route("/assets/web.css", methods=["GET"])
def stylesheet() -> Response:
    response = Response(_stylesheet_text(), mimetype="text/css")
    response.headers["Cache-Control"] = "public, max-age=86400"
    return response


@functools.cache
def _stylesheet_text() -> str:
    return (resource_path("templates") / "web" / "web.css").read_text(encoding="utf-8")
