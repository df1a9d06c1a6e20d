"""Why the gateway could not serve a request: typed errors carrying a `serving.status.Code`.

The core (checks, routing, the upstream call) raises these; the REST, admin and gRPC edges turn
them into answers. `http_status` is the HTTP status a REST client gets: TF Serving's mapping of
the code (`serving.status.HTTP_STATUS`), except for the two refusals TF Serving has no code for
(a request that is too large, a model server that answered nonsense) and for the model server's
own refusals, which are relayed as they came. The request log, the traffic stats and the
`mlops_gateway_requests_total` metric record that same status, so they match what clients saw.
"""

from __future__ import annotations

from serving.status import HTTP_STATUS, Code, ServingError, code_of_http_status

# The status of a served request, as the request log, the traffic stats and the metrics record it.
SERVED_STATUS = HTTP_STATUS[Code.OK]


class GatewayError(ServingError):
    """A request the gateway refuses or cannot serve; `code` says why, `message` says what."""

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.code]


class InvalidRequest(GatewayError):
    """The request itself is wrong (the message names the problem): INVALID_ARGUMENT, HTTP 400."""

    def __init__(self, message: str) -> None:
        super().__init__(Code.INVALID_ARGUMENT, message)


class RequestTooLarge(GatewayError):
    """More examples (or body bytes) than the gateway accepts in one request: HTTP 413."""

    def __init__(self, message: str) -> None:
        super().__init__(Code.INVALID_ARGUMENT, message)

    @property
    def http_status(self) -> int:
        return 413  # Payload Too Large


class BadModelServerAnswer(GatewayError):
    """The model server answered, but not with what a predict call returns: HTTP 502."""

    def __init__(self, message: str) -> None:
        super().__init__(Code.INTERNAL, message)

    @property
    def http_status(self) -> int:
        return 502  # Bad Gateway


class ModelServerRefused(GatewayError):
    """The model server's own error answer to a REST call, relayed with its HTTP status."""

    def __init__(self, upstream_status: int, message: str) -> None:
        super().__init__(code_of_http_status(upstream_status), message)
        self.upstream_status = upstream_status

    @property
    def http_status(self) -> int:
        return self.upstream_status


def is_invalid_request(err: BaseException) -> bool:
    """The model server refused the call as a bad request (a merged call is then retried one by one)."""
    return isinstance(err, GatewayError) and err.http_status == HTTP_STATUS[Code.INVALID_ARGUMENT]


class LogUnavailable(GatewayError):
    """The request log cannot be written (full or failing disk) and `log_failure = "refuse"`: the
    request is not answered rather than answered unlogged. UNAVAILABLE, HTTP 503; the message names
    the log problem. It clears by itself when the disk works again."""

    def __init__(self, problem: str) -> None:
        super().__init__(Code.UNAVAILABLE, f"{problem}; request not served (gateway log_failure = \"refuse\")")
