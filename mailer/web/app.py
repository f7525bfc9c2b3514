"""The app factory: one Flask app with a blueprint per page family and the pages' shared behaviour."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

import jinja2
from flask import Flask
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from mailer.config import Config, load_config
from mailer.db import Database
from mailer.resources import template_search_path
from mailer.web.archive import archive_pages
from mailer.web.assets import assets
from mailer.web.confirm import confirm_pages
from mailer.web.context import WebContext, add_security_headers, error_page, page_context
from mailer.web.health import health_pages, watch_database
from mailer.web.limits import init_limiter
from mailer.web.me import me_pages
from mailer.web.preferences import preference_pages
from mailer.web.subscribe import subscribe_pages
from mailer.web.unsubscribe import unsubscribe_pages
from mailer.web.webhooks import webhook_pages

# a one-click body is 26 bytes and a multipart one a few hundred; nothing legitimate is bigger
MAX_BODY_BYTES = 16 * 1024


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
    app = Flask(__name__, static_folder=None)
    # the operator's page templates, when set, come before ours
    app.jinja_loader = jinja2.FileSystemLoader(template_search_path(config.web.templates_dir))
    app.config.from_mapping(
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        MAX_FORM_MEMORY_SIZE=MAX_BODY_BYTES,
        MAX_FORM_PARTS=20,
    )
    if test_config is not None:
        app.config.from_mapping(test_config)
    init_limiter(app, config)
    app.extensions["mailer"] = WebContext(config, Database.from_config(config))
    hops = config.unsubscribe.trusted_proxies
    if hops and not server_reads_proxy_headers:
        # under another WSGI server (gunicorn...): behind nginx or a load balancer, REMOTE_ADDR is the proxy; the opt-out record wants the recipient
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)  # type: ignore[method-assign]
    for blueprint in (unsubscribe_pages, confirm_pages, subscribe_pages, preference_pages, me_pages,
                      archive_pages, health_pages, assets):
        app.register_blueprint(blueprint)
    app.register_blueprint(webhook_pages)
    app.register_error_handler(HTTPException, error_page)
    watch_database(app)
    app.after_request(add_security_headers)
    app.context_processor(page_context)
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
