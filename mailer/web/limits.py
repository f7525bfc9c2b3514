"""Rate limits for the public pages: one Flask-Limiter `limiter`, keyed by the client's address."""

from __future__ import annotations

from flask import Flask
from flask_limiter import Limiter
from limits.errors import ConfigurationError as LimitsConfigurationError

from mailer.config import Config
from mailer.errors import ConfigError
from mailer.web.context import client_ip

# a request without a peer address (a unit test's environ) still gets a bucket, a shared one
UNKNOWN_CLIENT = "unknown"


def _client_key() -> str:
    # the address waitress or ProxyFix already took from a trusted proxy's X-Forwarded-For
    return client_ip() or UNKNOWN_CLIENT


# headers_enabled: a 429 carries Retry-After, so a well-behaved client knows when to come back
limiter = Limiter(_client_key, headers_enabled=True, key_prefix="mailer")


def init_limiter(app: Flask, config: Config) -> None:
    """Attach `limiter` to `app`, counting in `[web] rate_limit_storage` (memory: per process).

    Set explicitly on every app: Flask-Limiter keeps what the previous app said otherwise.
    A test switches limits off with `RATELIMIT_ENABLED = False` in its test_config. Raises
    ConfigError when the storage is unknown or its client library is not installed.
    """
    app.config.setdefault("RATELIMIT_ENABLED", True)
    app.config.setdefault("RATELIMIT_STORAGE_URI", config.web.rate_limit_storage)
    try:
        limiter.init_app(app)
    except LimitsConfigurationError as exc:
        raise ConfigError(config.source, "web.rate_limit_storage", str(exc)) from None
