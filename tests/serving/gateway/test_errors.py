"""The gateway's typed errors: the code each carries and the HTTP status each is answered with."""

from __future__ import annotations

import pytest

from serving.gateway.errors import (
    BadModelServerAnswer,
    GatewayError,
    InvalidRequest,
    ModelServerRefused,
    RequestTooLarge,
    is_invalid_request,
)
from serving.status import Code


@pytest.mark.parametrize("error, code, http_status", [
    (InvalidRequest("bad"), Code.INVALID_ARGUMENT, 400),
    (RequestTooLarge("too many"), Code.INVALID_ARGUMENT, 413),
    (BadModelServerAnswer("nonsense"), Code.INTERNAL, 502),
    (GatewayError(Code.NOT_FOUND, "no such model"), Code.NOT_FOUND, 404),
    (GatewayError(Code.UNIMPLEMENTED, ":classify"), Code.UNIMPLEMENTED, 501),
    (GatewayError(Code.UNAVAILABLE, "down"), Code.UNAVAILABLE, 503),
    (GatewayError(Code.DEADLINE_EXCEEDED, "slow"), Code.DEADLINE_EXCEEDED, 504),
    (ModelServerRefused(404, "model server: no version 9"), Code.NOT_FOUND, 404),
    (ModelServerRefused(405, "model server: method"), Code.INTERNAL, 405),  # relayed as it came
])
def test_each_error_has_its_code_and_its_rest_status(error, code, http_status):
    assert (error.code, error.http_status) == (code, http_status)
    assert str(error) == error.message


def test_only_bad_requests_make_a_merged_call_go_out_one_by_one():
    assert is_invalid_request(ModelServerRefused(400, "bad example"))
    assert is_invalid_request(GatewayError(Code.FAILED_PRECONDITION, "model server: FAILED_PRECONDITION: ..."))
    assert not is_invalid_request(ModelServerRefused(413, "too large"))
    assert not is_invalid_request(RequestTooLarge("too many"))
    assert not is_invalid_request(GatewayError(Code.UNAVAILABLE, "down"))
    assert not is_invalid_request(ValueError("not a gateway error"))
