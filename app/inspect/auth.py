"""Who may open the inspector, and the CSRF token of its one form that writes.

A browser opens the pages with HTTP Basic: any user name, a read API key as the password (the key as
the user name with an empty password works too, as ``curl -u KEY:`` sends it); scripts may send
``Authorization: Bearer KEY``. Keys are checked in constant time by the read API's own check.

The retry form carries a signed double-submit token: a random nonce and its HMAC under the key that
opened the page, in a ``SameSite=Strict`` cookie and in a hidden field. A POST is refused unless both
are present, equal, and signed by the key the POST itself presents, so a page on another site, which
the browser would send the Basic credentials for, can neither read nor forge one. Nothing is kept on
the server, so the token works across ``--workers`` and restarts, and dies with the key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Sequence

from app.read.auth import key_matches

REALM = 'Basic realm="billing-mirror"'
CSRF_COOKIE = "bm_inspect_csrf"
CSRF_FIELD = "csrf_token"
_CSRF_CONTEXT = b"billing-mirror inspector retry form\x00"


def presented_keys(authorization: str | None) -> list[str]:
    """The candidate keys of an Authorization header (Basic: the password, else the user name;
    Bearer: the token); none for a missing or malformed header."""
    if not authorization:
        return []
    scheme, _, credentials = authorization.strip().partition(" ")
    credentials = credentials.strip()
    if not credentials:
        return []
    if scheme.lower() == "bearer":
        return [credentials]
    if scheme.lower() != "basic":
        return []
    try:
        decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return []
    user, _, password = decoded.partition(":")
    return [candidate for candidate in (password, user) if candidate]


def authorized_key(authorization: str | None, configured: Sequence[str]) -> str | None:
    """The configured key the header presents, or None."""
    for candidate in presented_keys(authorization):
        if key_matches(candidate, configured):
            return candidate
    return None


def _signature(key: str, nonce: str) -> str:
    return hmac.new(key.encode(), _CSRF_CONTEXT + nonce.encode(), hashlib.sha256).hexdigest()


def new_csrf_token(key: str) -> str:
    nonce = secrets.token_urlsafe(18)
    return f"{nonce}.{_signature(key, nonce)}"


def csrf_token_valid(key: str, cookie: str | None, field: str | None) -> bool:
    """The cookie and the form field are the same token, signed with ``key``."""
    if not cookie or not field or not hmac.compare_digest(cookie.encode(), field.encode()):
        return False
    nonce, _, signature = field.partition(".")
    return bool(nonce) and hmac.compare_digest(signature.encode(), _signature(key, nonce).encode())
