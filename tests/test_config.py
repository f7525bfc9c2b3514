"""Config loading: defaults, the file, the environment's secrets, and clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailer.config import DEFAULT_POSTAL_ADDRESS, StartTLS, UnsubscribeScope, load_config
from mailer.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mailer.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_promise_removal_from_all_correspondence_and_the_laguna_beach_address() -> None:
    config = load_config(ROOT / "config.example.toml", environ={})
    assert config.company.postal_address == DEFAULT_POSTAL_ADDRESS
    assert "Laguna Beach, California 92651" in config.company.postal_address
    assert config.unsubscribe.scope is UnsubscribeScope.ALL
    assert config.smtp.starttls is StartTLS.REQUIRED
    assert config.database.url == "sqlite:///mailer.db"
    assert config.compliance.ad_label == "Advertisement"


def test_example_config_documents_every_key() -> None:
    text = (ROOT / "config.example.toml").read_text(encoding="utf-8")
    config = load_config(ROOT / "config.example.toml", environ={})
    for section in ("database", "company", "sender", "smtp", "sending", "unsubscribe", "dkim",
                    "compliance", "consent", "inbound", "webhooks"):
        assert f"[{section}]" in text
        fields = getattr(config, section).__dataclass_fields__
        for name in fields:
            key = "from" if name == "from_address" else name
            assert f"\n{key} = " in text, f"{section}.{key} is not documented in config.example.toml"


def test_config_found_through_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, '[company]\nname = "Harmony Mails Europe"\n')
    monkeypatch.setenv("MAILER_CONFIG", str(path))
    monkeypatch.chdir(tmp_path / "..")
    assert load_config().company.name == "Harmony Mails Europe"


def test_secrets_come_from_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, '[unsubscribe]\nsecret_keys = ["file-key-0123456789"]\n')
    config = load_config(path, environ={
        "MAILER_SECRET_KEYS": "new-key-0123456789abc, old-key-0123456789abc",
        "MAILER_SMTP_PASSWORD": "hunter2-hunter2",
    })
    assert config.unsubscribe.secret_keys == ("new-key-0123456789abc", "old-key-0123456789abc")
    assert config.smtp.password == "hunter2-hunter2"
    assert "hunter2" not in repr(config)
    assert "new-key" not in repr(config)


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ('[company]\npostal_address = ""\n', "company.postal_address", "postal address"),
        ('[company]\npostal_address = "TODO: fill in"\n', "company.postal_address", "postal address"),
        ('[company]\npostal_address = "123 Main St, Anytown"\n', "company.postal_address", "postal address"),
        ('[smtp]\nport = "twenty-five"\n', "smtp.port", "whole number"),
        ('[smtp]\nport = 70000\n', "smtp.port", "1 to 65535"),
        ('[smtp]\nstarttls = "sometimes"\n', "smtp.starttls", "required, opportunistic, off"),
        ('[smtp]\nhots = "x"\n', "smtp.hots", "unknown key"),
        ('[smpt]\nhost = "x"\n', "smpt", "unknown section"),
        ('[sender]\nfrom = "a@x.com, b@x.com"\n', "sender.from", "one mailbox"),
        ('[sender]\nfrom = "news@harmonymails.com"\ndomain = "other.com"\n', "sender.from", "sending domain"),
        ('[unsubscribe]\nscope = "some"\n', "unsubscribe.scope", "all, list"),
        ('[unsubscribe]\nsecret_keys = ["short"]\n', "unsubscribe.secret_keys", "16 characters"),
        ('[unsubscribe]\ntrusted_proxy_address = "nginx.local"\n', "unsubscribe.trusted_proxy_address",
         "IP address"),
        ('[dkim]\ndomain = "harmonymails.com"\n', "dkim", "together"),
        ("[company\n", "-", "not valid TOML"),
    ],
)
def test_invalid_config_is_refused_with_file_key_and_reason(
    tmp_path: Path, text: str, key: str, reason: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    message = str(info.value)
    assert message.startswith(f"{path}: {key}: ")
    assert reason in message


def test_missing_signing_key_is_reported_only_when_needed(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""), environ={})
    with pytest.raises(ConfigError, match="MAILER_SECRET_KEYS"):
        config.require_secret_keys()


def test_named_config_file_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.toml", environ={})


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[smtp]\npassword = ["hunter2-secret"]\n', "smtp.password"),
        ("[smtp]\npassword = 4242424242\n", "smtp.password"),
        ('[smtp]\npassword = { value = "hunter2-secret" }\n', "smtp.password"),
        ('[unsubscribe]\nsecret_keys = ["hunter2-secret-long", 42]\n', "unsubscribe.secret_keys"),
        ('[database]\nurl = ["postgresql://mailer:hunter2-secret@db/mail"]\n', "database.url"),
        ('[database]\nurl = "mailer:hunter2-secret@db/mail"\n', "database.url"),
    ],
)
def test_an_error_about_a_secret_names_file_and_key_but_never_the_value(
    tmp_path: Path, text: str, key: str
) -> None:
    from click.testing import CliRunner

    from mailer.cli import main

    path = write(tmp_path, text)
    result = CliRunner().invoke(main, ["--config", str(path), "list", "ls"], env={"MAILER_CONFIG": None})
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {path}: {key}: ")
    assert result.output.count("\n") == 1
    assert "hunter2" not in result.output
    assert "4242" not in result.output


def test_a_wrong_type_of_an_ordinary_key_still_shows_the_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"smtp.port: must be a whole number; got 'twenty-five'"):
        load_config(write(tmp_path, '[smtp]\nport = "twenty-five"\n'), environ={})


def test_repr_and_str_of_a_config_hide_the_database_password(tmp_path: Path) -> None:
    path = write(tmp_path, '[database]\nurl = "postgresql+psycopg://mailer:hunter2-secret@db.internal/mail"\n')
    config = load_config(path, environ={"MAILER_SMTP_PASSWORD": "smtp-hunter2",
                                        "MAILER_SECRET_KEYS": "key-hunter2-0123456789"})
    for shown in (repr(config), str(config), repr(config.database), str(config.database)):
        assert "hunter2" not in shown
        assert "postgresql+psycopg://mailer:***@db.internal/mail" in shown
    assert config.database.url.endswith(":hunter2-secret@db.internal/mail")  # the real value is intact


def test_a_dkim_key_put_where_its_path_belongs_is_refused_without_printing_it() -> None:
    from mailer.content.dkim import load_private_key

    pem = "-----BEGIN PRIVATE KEY-----\nMIIEvhunter2secretmaterial\n-----END PRIVATE KEY-----\n"
    with pytest.raises(ConfigError) as caught:
        load_private_key(pem, "/etc/mailer.toml")
    assert str(caught.value) == (
        "/etc/mailer.toml: dkim.private_key: must be the path to a PEM file, not the key itself"
    )
