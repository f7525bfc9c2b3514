"""`mailer serve` and `mailer inbound process`: what recipients and their mail servers send back."""

from __future__ import annotations

import click

from mailer.cli import main
from mailer.cli.context import AppContext, pass_app

DEFAULT_THREADS = 16


@main.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (a reverse proxy with HTTPS belongs in front).")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535),
              help="TCP port to listen on.")
@click.option("--threads", default=DEFAULT_THREADS, show_default=True, type=click.IntRange(1, 256),
              help="Requests handled at once.")
@pass_app
def serve(app: AppContext, host: str, port: int, threads: int) -> None:
    """Run the unsubscribe web app under waitress until interrupted.

    Serves GET/POST /u/<token> (the page and RFC 8058 one-click) and GET /healthz.
    List-Unsubscribe links must be https: put nginx or another proxy with TLS in front
    and set unsubscribe.base_url to its public address.

    \b
    Example:
      $ mailer serve --host 127.0.0.1 --port 8080
      serving the unsubscribe app on http://127.0.0.1:8080 (16 threads)
    """
    from waitress.server import create_server

    from mailer.web import create_app

    app.db  # noqa: B018 -- refuse to start on an uninitialized database, with the usual message
    wsgi_app = create_app(app.config)
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
        expose_tracebacks=False,
    )
    click.echo(f"serving the unsubscribe app on http://{host}:{port} ({threads} threads)")
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
