"""Configuration, read from the environment once, when the application is built (pydantic-settings)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from app.timestamps import parse_duration

DEFAULT_TOLERANCE_SECONDS = 300
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
# The API version the mirror's handlers read and sync requests (set it to your webhook endpoint's).
DEFAULT_STRIPE_API_VERSION = "2026-07-29.dahlia"
DEFAULT_STRIPE_API_BASE = "https://api.stripe.com"
# How often `serve` with an API key reads again what the mirror knows is out of date.
DEFAULT_REFRESH_SECONDS = 60
# How long a delivery waits for its commit before it is answered 503 (the database is out or hung).
DEFAULT_DATABASE_TIMEOUT_SECONDS = 5
# How often `serve` re-applies failed events whose back-off has passed.
DEFAULT_RETRY_SECONDS = 60
# `serve`'s guards against idle and slow clients (app.server): seconds for a whole request head, for a
# whole body after its head, between requests on a kept-alive connection; connections per process.
DEFAULT_HEADER_TIMEOUT_SECONDS = 10
DEFAULT_BODY_TIMEOUT_SECONDS = 30
DEFAULT_KEEP_ALIVE_SECONDS = 5
DEFAULT_MAX_CONNECTIONS = 1000
# Logs: the level of `serve` (one line per delivery at info) and of the other commands (which print
# their own report), and the format of every line.
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
DEFAULT_SERVE_LOG_LEVEL = "info"
DEFAULT_COMMAND_LOG_LEVEL = "warning"
HOW_TO_SET_SECRET = (
    "No webhook signing secret is configured. Set STRIPE_WEBHOOK_SECRET to the endpoint's signing secret "
    "(whsec_...), or several separated by commas while you roll a secret, e.g. "
    "STRIPE_WEBHOOK_SECRET=whsec_current,whsec_previous billing-mirror serve"
)


HOW_TO_SET_API_KEY = (
    "No Stripe API key is configured. Set STRIPE_API_KEY (or --api-key) to a restricted key with read "
    "access to the mirrored resources (rk_live_... or rk_test_...), or a secret key."
)


class ConfigurationError(ValueError):
    """A setting is missing or malformed; the message says how to fix it."""


def default_database_url() -> str:
    return f"sqlite:///{Path.cwd() / 'billing-mirror.db'}"


def split_secrets(raw: str | None) -> tuple[str, ...]:
    """Comma-separated secrets, blanks dropped: an empty secret must never verify anything."""
    if not raw:
        return ()
    return tuple(part.strip() for part in raw.split(",") if part.strip())


# A tuple that the environment gives as comma-separated text (not as JSON, pydantic-settings' default).
CommaSeparated = Annotated[tuple[str, ...], NoDecode]
# The environment from_env reads (os.environ or a caller's mapping), for the duration of one call.
_ENVIRONMENT: ContextVar[Mapping[str, str] | None] = ContextVar("billing_mirror_environment", default=None)


class _Environment(EnvSettingsSource):
    """The variables named by the fields' aliases (exact case; empty ones left out, so a default
    applies) from a mapping instead of os.environ."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ  # read by _load_env_vars, which the base __init__ calls
        super().__init__(settings_cls, case_sensitive=True)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        names = [field.validation_alias for field in self.settings_cls.model_fields.values()]
        return {name: value for name in names if isinstance(name, str) and (value := self._environ.get(name))}


class Settings(BaseSettings):
    """Immutable; keyword construction takes only what it is given, ``from_env`` reads the environment."""

    model_config = SettingsConfigDict(frozen=True, validate_by_name=True, validate_by_alias=True)

    database_url: str = Field(default_factory=default_database_url, validation_alias="DATABASE_URL")
    webhook_secrets: CommaSeparated = Field((), validation_alias="STRIPE_WEBHOOK_SECRET")
    tolerance_seconds: int = Field(DEFAULT_TOLERANCE_SECONDS, validation_alias="STRIPE_WEBHOOK_TOLERANCE")
    max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, validation_alias="MAX_BODY_BYTES")
    # Keys that open the read API (issue #3); empty means the read API is closed.
    api_keys: CommaSeparated = Field((), validation_alias="BILLING_MIRROR_API_KEYS")
    # Upper bound on how many events share one commit (group commit); no environment variable.
    max_batch_size: int = 256
    # How many processes serve (`serve --workers`, which sets it for them): with one, its event loop
    # stores batches on PostgreSQL; with several, each process's writer thread does (app.ingest.committer).
    server_processes: int = Field(1, ge=1, validation_alias="BILLING_MIRROR_SERVER_PROCESSES")
    # Reading Stripe's API (sync, catch-up, reconcile, refresh): a secret or restricted key (read
    # access is enough), where to send requests, the Connect account, and the version to render in.
    stripe_api_key: str | None = Field(None, validation_alias="STRIPE_API_KEY")
    stripe_api_base: str = Field(DEFAULT_STRIPE_API_BASE, validation_alias="STRIPE_API_BASE")
    stripe_account: str | None = Field(None, validation_alias="STRIPE_ACCOUNT")
    stripe_api_version: str = Field(DEFAULT_STRIPE_API_VERSION, validation_alias="STRIPE_API_VERSION")
    # `serve`: catch up from the Events API every so many seconds (None: never), and read again what
    # the mirror knows is out of date every so many seconds (when an API key is set).
    catch_up_seconds: int | None = Field(None, validation_alias="BILLING_MIRROR_CATCH_UP_EVERY")
    refresh_seconds: int = Field(DEFAULT_REFRESH_SECONDS, validation_alias="BILLING_MIRROR_REFRESH_EVERY")
    # When a verified delivery is answered 2xx: once stored (the default; Stripe's retries add nothing
    # once the raw event is safe, and the mirror re-applies failed events itself), or only once
    # applied (500 until a delivery applies it).
    answer_after: Literal["stored", "applied"] = Field(
        "stored", validation_alias="BILLING_MIRROR_ANSWER_AFTER"
    )
    # Seconds a delivery waits for its commit before it is answered 503; also the database's
    # connect, lock and statement time limits are derived from it (app.db.engine).
    database_timeout_seconds: int = Field(
        DEFAULT_DATABASE_TIMEOUT_SECONDS, validation_alias="BILLING_MIRROR_DATABASE_TIMEOUT"
    )
    # `serve`: look for failed events whose back-off has passed (and re-apply them) this often.
    retry_seconds: int = Field(DEFAULT_RETRY_SECONDS, validation_alias="BILLING_MIRROR_RETRY_EVERY")
    # `serve`: how long idle and slow clients may hold a connection, and how many connections each
    # server process holds at most (app.server).
    header_timeout_seconds: int = Field(
        DEFAULT_HEADER_TIMEOUT_SECONDS, validation_alias="BILLING_MIRROR_HEADER_TIMEOUT"
    )
    body_timeout_seconds: int = Field(
        DEFAULT_BODY_TIMEOUT_SECONDS, validation_alias="BILLING_MIRROR_BODY_TIMEOUT"
    )
    keep_alive_seconds: int = Field(DEFAULT_KEEP_ALIVE_SECONDS, validation_alias="BILLING_MIRROR_KEEP_ALIVE")
    max_connections: int = Field(DEFAULT_MAX_CONNECTIONS, validation_alias="BILLING_MIRROR_MAX_CONNECTIONS")
    # Logs (app.webhook.logs): the level (None: the command's own default) and text or JSON lines.
    log_level: str | None = Field(None, validation_alias="BILLING_MIRROR_LOG_LEVEL")
    log_format: Literal["text", "json"] = Field("text", validation_alias="BILLING_MIRROR_LOG_FORMAT")
    # `serve`: GET /metrics also on this port of 127.0.0.1, without a key (None: only the main port).
    metrics_port: int | None = Field(None, validation_alias="BILLING_MIRROR_METRICS_PORT")

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise _configuration_error(exc) from None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """The environment's settings (``env`` instead of os.environ), overridden by the keywords
        that are not None (a command line option not given is None)."""
        with _reading(os.environ if env is None else env):
            return cls(**{key: value for key, value in overrides.items() if value is not None})

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        environ = _ENVIRONMENT.get()
        if environ is None:
            return (init_settings,)
        return (init_settings, _Environment(settings_cls, environ))

    @field_validator("webhook_secrets", "api_keys", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        return split_secrets(value) if isinstance(value, str) else value

    @field_validator(
        "catch_up_seconds",
        "refresh_seconds",
        "retry_seconds",
        "header_timeout_seconds",
        "body_timeout_seconds",
        "keep_alive_seconds",
        mode="before",
    )
    @classmethod
    def _duration(cls, value: Any, info: ValidationInfo) -> Any:
        """Text (the environment's, or an option) is a duration: 90, 90s, 5m, 2h."""
        if not isinstance(value, str):
            return value
        assert info.field_name is not None
        if value.strip() == "":
            return cls.model_fields[info.field_name].default
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise ConfigurationError(f"{cls.model_fields[info.field_name].validation_alias}: {exc}") from None

    @field_validator(
        "tolerance_seconds",
        "max_body_bytes",
        "database_timeout_seconds",
        "max_connections",
        "metrics_port",
        mode="before",
    )
    @classmethod
    def _positive_whole_number(cls, value: Any, info: ValidationInfo) -> Any:
        """Text (the environment's) must be a whole number above 0; blank means the default. Checked
        here rather than by PositiveInt so that the message names the variable; values given as
        numbers (command line options) are taken as they are."""
        if not isinstance(value, str):
            return value
        assert info.field_name is not None
        field = cls.model_fields[info.field_name]
        name = field.validation_alias
        if value.strip() == "":
            return field.default
        try:
            number = int(value)
        except ValueError:
            raise ConfigurationError(f"{name} must be a whole number, got {value!r}") from None
        if number <= 0:
            raise ConfigurationError(f"{name} must be greater than 0, got {number}")
        return number

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower_case_word(cls, value: Any, info: ValidationInfo) -> Any:
        """A level (debug, info, warning, error, critical) or format (text, json), in any case."""
        if not isinstance(value, str):
            return value
        assert info.field_name is not None
        word = value.strip().lower()
        if word == "":
            return cls.model_fields[info.field_name].default
        allowed = LOG_LEVELS if info.field_name == "log_level" else ("text", "json")
        if word not in allowed:
            name = cls.model_fields[info.field_name].validation_alias
            raise ConfigurationError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        return word

    def require_secrets(self) -> None:
        if not self.webhook_secrets:
            raise ConfigurationError(HOW_TO_SET_SECRET)

    def require_api_key(self) -> str:
        if not self.stripe_api_key:
            raise ConfigurationError(HOW_TO_SET_API_KEY)
        return self.stripe_api_key


@contextmanager
def _reading(environ: Mapping[str, str]) -> Iterator[None]:
    token = _ENVIRONMENT.set(environ)
    try:
        yield
    finally:
        _ENVIRONMENT.reset(token)


def _configuration_error(exc: ValidationError) -> ConfigurationError:
    """Our own message when a validator raised it, else pydantic's, naming the setting."""
    error = exc.errors()[0]
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, ConfigurationError):
        return cause
    where = ".".join(str(part) for part in error["loc"])
    return ConfigurationError(f"{where}: {error['msg']}")
