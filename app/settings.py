"""Configuration, read from the environment once, when the application is built."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_TOLERANCE_SECONDS = 300
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
HOW_TO_SET_SECRET = (
    "No webhook signing secret is configured. Set STRIPE_WEBHOOK_SECRET to the endpoint's signing secret "
    "(whsec_...), or several separated by commas while you roll a secret, e.g. "
    "STRIPE_WEBHOOK_SECRET=whsec_current,whsec_previous billing-mirror serve"
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


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a whole number, got {raw!r}") from None
    if value <= 0:
        raise ConfigurationError(f"{name} must be greater than 0, got {value}")
    return value


@dataclass(frozen=True)
class Settings:
    database_url: str = field(default_factory=default_database_url)
    webhook_secrets: tuple[str, ...] = ()
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    # Keys that open the read API (issue #3); empty means the read API is closed.
    api_keys: tuple[str, ...] = ()
    # Upper bound on how many events share one commit (group commit).
    max_batch_size: int = 256

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        env = os.environ if env is None else env
        values: dict[str, object] = {
            "database_url": env.get("DATABASE_URL") or default_database_url(),
            "webhook_secrets": split_secrets(env.get("STRIPE_WEBHOOK_SECRET")),
            "tolerance_seconds": _positive_int(env, "STRIPE_WEBHOOK_TOLERANCE", DEFAULT_TOLERANCE_SECONDS),
            "max_body_bytes": _positive_int(env, "MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES),
            "api_keys": split_secrets(env.get("BILLING_MIRROR_API_KEYS")),
        }
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**values)  # type: ignore[arg-type]

    def require_secrets(self) -> None:
        if not self.webhook_secrets:
            raise ConfigurationError(HOW_TO_SET_SECRET)
