"""[webhooks] and smtp.provider: validated at start with file, key and reason; secrets from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest
from webhook_helpers import SendGridKeys

from mailer.config import SmtpProvider, load_config
from mailer.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mailer.toml"
    path.write_text('[unsubscribe]\nsecret_keys = ["a-signing-key-0123456789"]\n' + text, encoding="utf-8")
    return path


@pytest.mark.parametrize(("text", "key", "reason"), [
    ('[webhooks]\nses_topic_arns = ["ses-feedback"]', "webhooks.ses_topic_arns", "SNS topic ARN"),
    ('[webhooks]\nsendgrid_public_key = "not a key"', "webhooks.sendgrid_public_key", "not an ECDSA public key"),
    ('[webhooks]\npostmark_username = "postmark"', "webhooks.postmark_password", "together"),
    ('[webhooks]\npostmark_username = "p"\npostmark_password = "short"', "webhooks.postmark_password",
     "at least 16"),
    ('[webhooks]\nmailgun_key = "x"', "webhooks.mailgun_key", "unknown key"),
    ('[smtp]\nprovider = "sparkpost"', "smtp.provider", "must be one of none, ses, sendgrid, postmark, mailgun"),
])
def test_a_bad_webhook_setting_is_refused_with_key_and_reason(
        tmp_path: Path, text: str, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_config(write(tmp_path, text), environ={})
    message = str(refused.value)
    assert key in message and reason in message and "\n" not in message


def test_an_rsa_key_is_no_sendgrid_key(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    with pytest.raises(ConfigError, match="P-256"):
        load_config(write(tmp_path, f"[webhooks]\nsendgrid_public_key = '''{pem}'''"), environ={})


def test_webhook_secrets_come_from_the_environment_and_are_never_shown(tmp_path: Path) -> None:
    keys = SendGridKeys()
    config = load_config(write(tmp_path, '[smtp]\nprovider = "sendgrid"\n[webhooks]\npostmark_username = "pm"'),
                         environ={"MAILER_WEBHOOKS_SENDGRID_PUBLIC_KEY": keys.public,
                                  "MAILER_WEBHOOKS_POSTMARK_PASSWORD": "env-password-0123456789",
                                  "MAILER_WEBHOOKS_MAILGUN_SIGNING_KEY": "key-from-the-environment"})
    hooks = config.webhooks
    assert (hooks.sendgrid_public_key, hooks.postmark_password, hooks.mailgun_signing_key) == (
        keys.public, "env-password-0123456789", "key-from-the-environment")
    assert config.smtp.provider is SmtpProvider.SENDGRID
    shown = repr(config)
    assert "env-password" not in shown and "key-from-the-environment" not in shown and keys.public not in shown
