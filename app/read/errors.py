"""Why a read request cannot be answered, in Stripe's terms (type, code, param), without HTTP."""

from __future__ import annotations


class InvalidRequest(Exception):
    """A Stripe ``invalid_request_error``: a bad parameter (400) or a missing object (404)."""

    def __init__(
        self, message: str, *, param: str | None = None, code: str | None = None, status: int = 400
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.status = status


def resource_missing(object_name: str, object_id: str, *, param: str, status: int) -> InvalidRequest:
    return InvalidRequest(
        f"No such {object_name}: '{object_id}'", param=param, code="resource_missing", status=status
    )
