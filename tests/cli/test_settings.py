"""The settings the commands read: environment variables, overrides, defaults, messages."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from app.cli.main import cli
from app.settings import HOW_TO_SET_SECRET, ConfigurationError, Settings, default_database_url


def test_read_from_the_environment_with_defaults() -> None:
    settings = Settings.from_env(
        {
            "DATABASE_URL": "sqlite:///mirror.db",
            "STRIPE_WEBHOOK_SECRET": " whsec_new, ,whsec_old,",
            "STRIPE_WEBHOOK_TOLERANCE": "60",
            "MAX_BODY_BYTES": " ",
            "BILLING_MIRROR_API_KEYS": "bm_1,bm_2",
            "max_batch_size": "1",  # no such variable
        }
    )
    assert settings == Settings(
        database_url="sqlite:///mirror.db",
        webhook_secrets=("whsec_new", "whsec_old"),
        tolerance_seconds=60,
        max_body_bytes=1024 * 1024,
        api_keys=("bm_1", "bm_2"),
        max_batch_size=256,
    )
    empty = Settings.from_env({"DATABASE_URL": "", "STRIPE_WEBHOOK_SECRET": ""})
    assert empty.database_url == default_database_url() and empty.webhook_secrets == ()
    assert (empty.tolerance_seconds, empty.max_body_bytes, empty.api_keys) == (300, 1024 * 1024, ())


def test_overrides_win_unless_none_and_keywords_ignore_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = {"DATABASE_URL": "sqlite:///env.db", "STRIPE_WEBHOOK_SECRET": "whsec_env"}
    settings = Settings.from_env(env, database_url="sqlite:///flag.db", webhook_secrets=None)
    assert (settings.database_url, settings.webhook_secrets) == ("sqlite:///flag.db", ("whsec_env",))
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", "whsec_process")
    monkeypatch.setenv("MAX_BODY_BYTES", "10")
    assert Settings.from_env().webhook_secrets == ("whsec_process",)
    assert Settings.from_env().max_body_bytes == 10
    assert Settings.from_env({}).webhook_secrets == ()  # the mapping given, not os.environ
    assert Settings(database_url="sqlite:///x.db").webhook_secrets == ()
    assert Settings().max_body_bytes == 1024 * 1024


def test_settings_are_immutable() -> None:
    settings = Settings(webhook_secrets=("whsec_x",))
    with pytest.raises(ValueError, match="frozen"):
        settings.webhook_secrets = ()  # type: ignore[misc]
    assert settings.webhook_secrets == ("whsec_x",)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"STRIPE_WEBHOOK_TOLERANCE": "five"}, "STRIPE_WEBHOOK_TOLERANCE must be a whole number, got 'five'"),
        ({"MAX_BODY_BYTES": "1.5"}, "MAX_BODY_BYTES must be a whole number, got '1.5'"),
        ({"MAX_BODY_BYTES": "0"}, "MAX_BODY_BYTES must be greater than 0, got 0"),
        ({"STRIPE_WEBHOOK_TOLERANCE": "-3"}, "STRIPE_WEBHOOK_TOLERANCE must be greater than 0, got -3"),
    ],
)
def test_malformed_numbers_are_explained(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        Settings.from_env(env)
    assert str(raised.value) == message


def test_require_secrets() -> None:
    with pytest.raises(ConfigurationError) as raised:
        Settings.from_env({}).require_secrets()
    assert str(raised.value) == HOW_TO_SET_SECRET
    Settings.from_env({"STRIPE_WEBHOOK_SECRET": "whsec_x"}).require_secrets()


def test_serve_refuses_bad_settings_before_starting(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'never.db'}"
    runner = CliRunner()
    no_secret = runner.invoke(cli, ["serve"], env={"DATABASE_URL": url, "STRIPE_WEBHOOK_SECRET": ""})
    assert no_secret.exit_code == 2 and "No webhook signing secret is configured" in no_secret.output
    bad = runner.invoke(
        cli, ["serve"], env={"DATABASE_URL": url, "STRIPE_WEBHOOK_SECRET": "whsec_x", "MAX_BODY_BYTES": "big"}
    )
    assert bad.exit_code == 2 and "MAX_BODY_BYTES must be a whole number, got 'big'" in bad.output
    assert not (tmp_path / "never.db").exists()
