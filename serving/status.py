"""TF Serving's error model, shared by the model server and the gateway: the canonical status codes,
TF Serving's mapping of them to HTTP statuses, and the typed error that carries one.

Cores raise `ServingError`; only the REST and gRPC edges turn its `code` into a status.
"""

from __future__ import annotations

import enum
from typing import Mapping

from core.errors import DataError, MlopsError


class Code(enum.IntEnum):
    """Canonical status codes (the same numbers as `grpc.StatusCode` and `tensorflow.error.Code`)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


# TF Serving's `ToHTTPStatusCode` (model_servers/http_server.cc).
HTTP_STATUS: Mapping[Code, int] = {
    Code.OK: 200,
    Code.CANCELLED: 499,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500,
    Code.UNAUTHENTICATED: 401,
}


class ServingError(MlopsError):
    """A request or load failure with the status code TF Serving would return and its message."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = Code(code)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def status_string(self) -> str:
        """`INVALID_ARGUMENT: ...`, the form TF Serving nests inside other messages."""
        return f"{self.code.name}: {self.message}"


class InvalidRequestError(ServingError, DataError):
    """The request itself is unusable (INVALID_ARGUMENT): wrong type, shape, name or JSON."""

    def __init__(self, message: str) -> None:
        super().__init__(Code.INVALID_ARGUMENT, message)


def invalid(message: str) -> InvalidRequestError:
    return InvalidRequestError(message)


# The reverse of HTTP_STATUS for the statuses TF Serving answers with (several codes share 400,
# 409 and 500: the most specific one is chosen); 413 is the REST front's own body-size refusal.
CODE_OF_HTTP_STATUS: Mapping[int, Code] = {
    400: Code.INVALID_ARGUMENT, 401: Code.UNAUTHENTICATED, 403: Code.PERMISSION_DENIED, 404: Code.NOT_FOUND,
    409: Code.ABORTED, 413: Code.INVALID_ARGUMENT, 429: Code.RESOURCE_EXHAUSTED, 499: Code.CANCELLED,
    501: Code.UNIMPLEMENTED, 503: Code.UNAVAILABLE, 504: Code.DEADLINE_EXCEEDED,
}


def code_of_http_status(status: int) -> Code:
    """The gRPC code for an HTTP status (INTERNAL for anything unlisted, as a 5xx would be)."""
    return CODE_OF_HTTP_STATUS.get(status, Code.INTERNAL)
