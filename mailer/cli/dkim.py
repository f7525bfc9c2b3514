"""`mailer dkim keygen`: a signing key and the DNS record to publish."""

from __future__ import annotations

from pathlib import Path

import click

from mailer.cli import main
from mailer.cli.context import AppContext, pass_app
from mailer.content.dkim import generate_key


@main.group("dkim")
def dkim_group() -> None:
    """DKIM signing keys.

    \b
    Example:
      $ mailer dkim keygen --selector hm2026
    """


@dkim_group.command("keygen")
@click.option("--selector", required=True, help="The DKIM selector, e.g. hm2026.")
@click.option("--domain", default=None, help="The signing domain (default: dkim.domain, else the sending domain).")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the private key (default: ./dkim-SELECTOR.pem); never overwritten.")
@pass_app
def dkim_keygen(app: AppContext, selector: str, domain: str | None, out: Path | None) -> None:
    """Write a new 2048-bit RSA key and print the DNS TXT record to publish.

    \b
    Example:
      $ mailer dkim keygen --selector hm2026
      wrote dkim-hm2026.pem (keep it secret; mode 0600)
      publish this TXT record, then set [dkim] in mailer.toml:
      hm2026._domainkey.harmonymails.com. IN TXT ( "v=DKIM1; k=rsa; p=MIIBIjAN..." )
    """
    config = app.config
    domain = domain or config.dkim.domain or config.sender.sending_domain
    path = out or Path(f"dkim-{selector}.pem")
    record = generate_key(path, domain, selector)
    click.echo(f"wrote {path} (keep it secret; mode 0600)")
    click.echo("publish this TXT record, then set [dkim] in mailer.toml:")
    click.echo(record.zone_line())
    click.echo("")
    click.echo("[dkim]")
    click.echo(f'domain = "{domain}"')
    click.echo(f'selector = "{selector}"')
    click.echo(f'private_key = "{path.resolve()}"')
