"""Stripe-Signature verification: a pure function over the raw body, the header, the secrets and now.

Scheme (see Stripe's webhook docs): the header is ``t=<unix>,v1=<hex>[,v1=<hex>...][,v0=...]``; each
``v1`` is HMAC-SHA256(secret, f"{t}.{raw body}"). Only ``v1`` counts, so a forged weaker scheme cannot
be used to downgrade the check. Unlike stripe-python, timestamps too far in the *future* are rejected as
well: a signature minted for later is as suspicious as a stale one.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from enum import StrEnum
from hashlib import sha256

EXPECTED_SCHEME = "v1"


class SignatureProblem(StrEnum):
    MALFORMED_HEADER = "malformed_header"
    NO_V1_SIGNATURE = "no_v1_signature"
    NO_MATCHING_SIGNATURE = "no_matching_signature"
    TIMESTAMP_TOO_OLD = "timestamp_too_old"
    TIMESTAMP_IN_FUTURE = "timestamp_in_future"
    NO_SECRET = "no_secret_configured"


class SignatureError(Exception):
    """Verification failed. The message never contains a secret or an expected signature."""

    def __init__(self, problem: SignatureProblem, message: str) -> None:
        super().__init__(message)
        self.problem = problem
        self.message = message


def compute_signature(payload: bytes, secret: str, timestamp: int) -> str:
    signed = str(timestamp).encode("ascii") + b"." + payload
    return hmac.new(secret.encode("utf-8"), signed, sha256).hexdigest()


def sign_header(payload: bytes, secrets: str | Sequence[str], timestamp: int) -> str:
    """Build a header the way Stripe does: one v1 per active secret (used by tests and replay)."""
    if isinstance(secrets, str):
        secrets = [secrets]
    parts = [f"t={timestamp}"] + [f"v1={compute_signature(payload, s, timestamp)}" for s in secrets]
    return ",".join(parts)


def parse_header(header: str | None) -> tuple[int, list[str]]:
    """Return (timestamp, v1 signatures). The first ``t`` wins, as in Stripe's libraries."""
    if not header:
        raise SignatureError(SignatureProblem.MALFORMED_HEADER, "Missing Stripe-Signature header")
    timestamp: int | None = None
    signatures: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            continue
        if key == "t" and timestamp is None:
            if not value.isascii() or not value.isdigit():
                break
            timestamp = int(value)
        elif key == EXPECTED_SCHEME:
            signatures.append(value)
    if timestamp is None:
        raise SignatureError(
            SignatureProblem.MALFORMED_HEADER,
            "Unable to extract timestamp and signatures from the Stripe-Signature header",
        )
    return timestamp, signatures


def verify_signature(
    payload: bytes,
    header: str | None,
    secrets: Sequence[str],
    now: float,
    tolerance: int,
) -> int:
    """Check ``header`` against ``payload``; return the signed timestamp or raise SignatureError.

    Accepts when any v1 value matches any non-empty secret (secret rotation sends one v1 per secret).
    Every candidate is compared in constant time and the loop does not stop early on a match.
    """
    usable = [secret for secret in secrets if secret.strip()]
    if not usable:
        raise SignatureError(SignatureProblem.NO_SECRET, "No webhook signing secret is configured")
    timestamp, signatures = parse_header(header)
    if not signatures:
        raise SignatureError(SignatureProblem.NO_V1_SIGNATURE, "No signatures found with expected scheme v1")
    matched = False
    for secret in usable:
        expected = compute_signature(payload, secret, timestamp).encode("ascii")
        for candidate in signatures:
            matched |= hmac.compare_digest(expected, candidate.encode("utf-8", "replace"))
    if not matched:
        raise SignatureError(
            SignatureProblem.NO_MATCHING_SIGNATURE,
            "No signatures found matching the expected signature for payload",
        )
    if timestamp < now - tolerance:
        raise SignatureError(
            SignatureProblem.TIMESTAMP_TOO_OLD,
            f"Timestamp {timestamp} is more than {tolerance} seconds old",
        )
    if timestamp > now + tolerance:
        raise SignatureError(
            SignatureProblem.TIMESTAMP_IN_FUTURE,
            f"Timestamp {timestamp} is more than {tolerance} seconds in the future",
        )
    return timestamp
