"""API keys of the mirror itself, presented like Stripe keys: ``Authorization: Bearer KEY`` or HTTP Basic
with the key as user name. Keys are compared in constant time and never written into a response."""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Sequence

from app.read.errors import InvalidRequest

HOW_TO_OPEN = (
    "The read API is closed because no API key is configured. Start the server with "
    "BILLING_MIRROR_API_KEYS set to one or more keys of your choosing, separated by commas "
    "(e.g. BILLING_MIRROR_API_KEYS=bm_$(openssl rand -hex 24)), then send one as "
    "'Authorization: Bearer <key>'."
)
NO_KEY = (
    "You did not provide an API key. Send it in the Authorization header, as 'Authorization: Bearer <key>' "
    "or as the user name of HTTP Basic auth."
)
BAD_KEY = "Invalid API key provided."
BAD_HEADER = "The Authorization header must be 'Bearer <key>' or HTTP Basic with the key as user name."


def presented_key(authorization: str | None) -> str | None:
    """The key in an Authorization header, or None when there is none; raises on a malformed one."""
    if authorization is None or not authorization.strip():
        return None
    scheme, _, credentials = authorization.strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer" and credentials:
        return credentials
    if scheme.lower() == "basic" and credentials:
        try:
            decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise _unauthorized(BAD_HEADER) from None
        user, _, _password = decoded.partition(":")
        return user or None
    raise _unauthorized(BAD_HEADER)


def key_matches(key: str, configured: Sequence[str]) -> bool:
    """Constant time per configured key, and every key is always compared."""
    given = key.encode()
    matched = False
    for candidate in configured:
        matched |= hmac.compare_digest(given, candidate.encode())
    return matched


def _unauthorized(message: str, code: str | None = None) -> InvalidRequest:
    return InvalidRequest(message, status=401, code=code)


def authenticate(authorization: str | None, configured: Sequence[str]) -> None:
    """Raise a 401 ``InvalidRequest`` unless the header carries one of the configured keys."""
    if not configured:
        raise _unauthorized(HOW_TO_OPEN, code="api_closed")
    key = presented_key(authorization)
    if key is None:
        raise _unauthorized(NO_KEY)
    if not key_matches(key, configured):
        raise _unauthorized(BAD_KEY, code="api_key_invalid")
