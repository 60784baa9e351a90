"""verify_signature is a pure function: every case here is bytes, header, secrets and a clock."""

from __future__ import annotations

import time

import pytest
from freezegun import freeze_time

from app.webhook.signature import (
    SignatureError,
    SignatureProblem,
    compute_signature,
    parse_header,
    sign_header,
    verify_signature,
)

BODY = b'{"id":"evt_1","object":"event"}'
SECRET = "whsec_current"
OLD_SECRET = "whsec_previous"
T = 1_767_225_600
TOLERANCE = 300


def check(header: str | None, *, secrets: tuple[str, ...] = (SECRET,), body: bytes = BODY) -> int:
    return verify_signature(body, header, secrets, now=time.time(), tolerance=TOLERANCE)


def problem_of(header: str | None, **kwargs: object) -> SignatureProblem:
    with pytest.raises(SignatureError) as info:
        check(header, **kwargs)  # type: ignore[arg-type]
    return info.value.problem


@freeze_time("2026-01-01 00:00:00")
def test_valid_signature_returns_its_timestamp() -> None:
    assert check(sign_header(BODY, SECRET, T)) == T


@pytest.mark.parametrize(
    ("frozen_at", "accepted"),
    [
        (T + TOLERANCE - 1, True),
        (T + TOLERANCE, True),
        (T + TOLERANCE + 1, False),
    ],
)
def test_age_boundary(frozen_at: int, accepted: bool) -> None:
    header = sign_header(BODY, SECRET, T)
    with freeze_time(time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(frozen_at))):
        if accepted:
            assert check(header) == T
        else:
            assert problem_of(header) == SignatureProblem.TIMESTAMP_TOO_OLD


@pytest.mark.parametrize(
    ("frozen_at", "accepted"),
    [
        (T - TOLERANCE + 1, True),
        (T - TOLERANCE, True),
        (T - TOLERANCE - 1, False),
    ],
)
def test_future_boundary(frozen_at: int, accepted: bool) -> None:
    header = sign_header(BODY, SECRET, T)
    with freeze_time(time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(frozen_at))):
        if accepted:
            assert check(header) == T
        else:
            assert problem_of(header) == SignatureProblem.TIMESTAMP_IN_FUTURE


@freeze_time("2026-01-01 00:00:00")
def test_rotation_accepts_either_secret() -> None:
    both = sign_header(BODY, [SECRET, OLD_SECRET], T)
    assert check(both, secrets=(SECRET,)) == T
    assert check(both, secrets=(OLD_SECRET,)) == T
    only_old = sign_header(BODY, OLD_SECRET, T)
    assert check(only_old, secrets=(SECRET, OLD_SECRET)) == T
    assert problem_of(only_old, secrets=(SECRET,)) == SignatureProblem.NO_MATCHING_SIGNATURE


@freeze_time("2026-01-01 00:00:00")
def test_several_v1_values_with_one_valid() -> None:
    good = compute_signature(BODY, SECRET, T)
    header = f"t={T},v1={'0' * 64},v1=deadbeef,v1={good},v1={'f' * 64}"
    assert check(header) == T


@freeze_time("2026-01-01 00:00:00")
def test_v0_only_is_not_a_signature() -> None:
    fake = compute_signature(BODY, SECRET, T)  # even a correct HMAC under v0 must not count
    assert problem_of(f"t={T},v0={fake}") == SignatureProblem.NO_V1_SIGNATURE


@freeze_time("2026-01-01 00:00:00")
def test_other_schemes_are_ignored_beside_v1() -> None:
    header = sign_header(BODY, SECRET, T) + f",v0={'a' * 64},v2=whatever"
    assert check(header) == T


@freeze_time("2026-01-01 00:00:00")
@pytest.mark.parametrize("secrets", [(), ("",), ("", "  ")])
def test_empty_secret_never_verifies(secrets: tuple[str, ...]) -> None:
    # An HMAC keyed with "" is computable by anyone: it must not count as a configured secret.
    header = sign_header(BODY, "", T)
    assert problem_of(header, secrets=secrets) == SignatureProblem.NO_SECRET


@freeze_time("2026-01-01 00:00:00")
@pytest.mark.parametrize(
    "header",
    [None, "", "garbage", "v1=abc", "t=,v1=abc", "t=abc,v1=abc", "t=-5,v1=abc", "t=1.5,v1=abc"],
)
def test_malformed_headers(header: str | None) -> None:
    assert problem_of(header) == SignatureProblem.MALFORMED_HEADER


@freeze_time("2026-01-01 00:00:00")
def test_any_change_to_the_bytes_breaks_the_signature() -> None:
    header = sign_header(BODY, SECRET, T)
    assert problem_of(header, body=BODY + b" ") == SignatureProblem.NO_MATCHING_SIGNATURE
    assert problem_of(header, body=BODY.replace(b"evt_1", b"evt_2")) == SignatureProblem.NO_MATCHING_SIGNATURE


@freeze_time("2026-01-01 00:00:00")
def test_timestamp_is_part_of_what_is_signed() -> None:
    signature = compute_signature(BODY, SECRET, T)
    assert problem_of(f"t={T + 1},v1={signature}") == SignatureProblem.NO_MATCHING_SIGNATURE


def test_first_t_wins_and_whitespace_is_tolerated() -> None:
    assert parse_header("t=10, v1=aa ,t=20,v1=bb") == (10, ["aa", "bb"])


@freeze_time("2026-01-01 00:00:00")
def test_messages_never_contain_secrets_or_expected_signature() -> None:
    expected = compute_signature(BODY, SECRET, T)
    for header in (f"t={T},v1=00", f"t={T - 10_000},v1={expected}", None):
        with pytest.raises(SignatureError) as info:
            check(header)
        assert SECRET not in str(info.value)
        assert expected not in info.value.message
