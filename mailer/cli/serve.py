"""`mailer serve`: the subscribers' web pages under waitress."""

from __future__ import annotations

import signal
from types import FrameType

import click

from mailer.cli import main
from mailer.cli.context import AppContext, pass_app

DEFAULT_THREADS = 8  # the GIL and SQLite's one writer make more threads slower, not faster


@main.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (a reverse proxy with HTTPS belongs in front).")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535),
              help="TCP port to listen on.")
@click.option("--threads", default=DEFAULT_THREADS, show_default=True, type=click.IntRange(1, 256),
              help="Requests handled at once.")
@pass_app
def serve(app: AppContext, host: str, port: int, threads: int) -> None:
    """Run the subscribers' web app under waitress until interrupted.

    Serves GET/POST /u/<token> (the page and RFC 8058 one-click), the subscribers' pages
    (/subscribe/<list>, /confirm/<token>, /p/<token>, /preferences, /me/<token>, /archive),
    GET /healthz, and POST /webhooks/ses|sendgrid|postmark|mailgun for each provider
    [webhooks] configures.
    List-Unsubscribe links must be https: put nginx or another proxy with TLS in front
    and set unsubscribe.base_url to its public address. With unsubscribe.trusted_proxies set,
    X-Forwarded-For and -Proto are believed only from unsubscribe.trusted_proxy_address.

    \b
    Example:
      $ mailer serve --host 127.0.0.1 --port 8080
      serving the web app on http://127.0.0.1:8080 (8 threads)
    """
    from waitress.server import create_server

    from mailer.web import create_app, waitress_proxy_settings

    app.db  # noqa: B018 -- refuse to start on an uninitialized database, with the usual message
    wsgi_app = create_app(app.config, server_reads_proxy_headers=True)
    try:
        server = create_server(
            wsgi_app,
            host=host,
            port=port,
            threads=threads,
            ident="",  # no Server header to fingerprint
            # mail providers POST in bursts right after a big send: queue them rather than refuse
            backlog=2048,
            connection_limit=1000,
            channel_timeout=30,
            # the app answers anything over 16 KiB with its own 413 page; past this, waitress stops
            # reading at once, so no one can make it buffer a gigabyte
            max_request_body_size=1024 * 1024,
            expose_tracebacks=False,
            **waitress_proxy_settings(app.config),
        )
    except OSError as exc:
        # a port already taken or a host that is not ours: one line, not a traceback
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    click.echo(f"serving the web app on http://{host}:{port} ({threads} threads)")
    # systemd and docker stop with SIGTERM: stop as on Ctrl-C, where waitress lets the requests in
    # flight finish (up to 5 s), rather than dying with an opt-out half written
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt
