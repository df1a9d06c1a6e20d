"""The admin edge: the token-protected `/admin/...` API that `serving/rollout.py` drives.

`GET /admin/models`, `POST /admin/flush`, and per model `/admin/models/{name}/{action}`:
`policy` (GET, PUT), `stats` (GET `?since_seconds=`), `canary`, `share`, `shadow`, `automation`
(PUT), `promote`, `rollback` (POST). Changes go through the routing table (`routing.py`), which
writes models.config and the state file shared by every replica; a version the model server has not
loaded yet is refused (503, retry later). A change may name the policy `revision` it was decided on
(`"expected_revision": N` in the body): when another change (on any replica) came first it is
refused with 409 and nothing changes. Needs `Authorization: Bearer <token>` (MLOPS_GATEWAY_ADMIN_TOKEN, or the
file `admin_token_file`, re-read when it changes: rotation without a restart). Every refused call
counts in `mlops_gateway_admin_auth_failures_total{reason}`; the token itself is never logged.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
from typing import Any

from aiohttp import web

from core.errors import MlopsError
from serving.gateway.config import GatewayConfigError, GatewaySettings, check_admin_token, read_admin_token
from serving.gateway.core import GatewayCore
from serving.gateway.errors import GatewayError, InvalidRequest
from serving.gateway.rest import error_response, gateway_error_response, json_response, read_json
from serving.gateway.routing import ModelRoute, RoutingConflict, RoutingError, UnknownModel
from serving.gateway.upstream import loads, upstream_error_text
from serving.status import Code

log = logging.getLogger(__name__)

_ADMIN_ACTIONS = frozenset({"policy", "stats", "canary", "share", "promote", "rollback", "shadow", "automation"})


class MethodNotAllowed(GatewayError):
    """An admin action asked for with the wrong HTTP method."""

    def __init__(self, message: str) -> None:
        super().__init__(Code.UNIMPLEMENTED, message)

    @property
    def http_status(self) -> int:
        return 405


class AdminToken:
    """The admin token now: the setting's, or the token file's as it is at this moment."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.path = settings.admin_token_file
        self._token = settings.admin_token
        self._stamp: tuple[int, int, int] | None = None
        self._problem = ""

    def current(self) -> str:
        """The token to compare with; "" while the file cannot be read or holds an unusable token
        (then every call is refused: a half-written rotation must not open the API)."""
        if self.path is None:
            return self._token
        try:
            stat = os.stat(self.path)
        except OSError as err:
            return self._unusable(f"cannot read the admin token file {self.path}: {err.strerror}")
        stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:  # one stat per admin call; the file is read only when it changed
            try:
                token = read_admin_token(self.path)
                check_admin_token(token, f"the token in {self.path}")
            except GatewayConfigError as err:
                return self._unusable(str(err))
            if self._stamp is not None:
                log.warning("admin token file %s changed: the new token is in use", self.path)
            self._token, self._stamp, self._problem = token, stamp, ""
        return self._token

    def _unusable(self, problem: str) -> str:
        if problem != self._problem:
            log.error("%s; refusing every admin call until it is fixed", problem)
        self._problem, self._stamp, self._token = problem, None, ""
        return ""

    @property
    def problem(self) -> str:
        return self._problem


class AdminApi:
    """The admin handlers of one gateway (`add_routes` puts them on an aiohttp application)."""

    def __init__(self, core: GatewayCore) -> None:
        self.core = core
        self.settings = core.settings
        self.token = AdminToken(core.settings)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/admin/{tail:.*}", self.handle_admin)

    def _authorize(self, request: web.Request) -> None:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            self._refuse("missing", Code.UNAUTHENTICATED, "the admin API needs 'Authorization: Bearer <token>'")
        if not self.settings.admin_enabled:
            self._refuse("disabled", Code.PERMISSION_DENIED,
                         "the admin API is disabled: no admin token is configured (MLOPS_GATEWAY_ADMIN_TOKEN)")
        expected = self.token.current()
        if not expected:
            self._refuse("unusable_token_file", Code.PERMISSION_DENIED,
                         f"the admin API is closed: {self.token.problem}")
        if not hmac.compare_digest(token.encode(), expected.encode()):
            self._refuse("wrong", Code.PERMISSION_DENIED, "wrong admin token")

    def _refuse(self, reason: str, code: Code, message: str) -> None:
        self.core.metrics.admin_auth_failures.labels(reason).inc()
        raise GatewayError(code, message)

    async def handle_admin(self, request: web.Request) -> web.Response:
        core = self.core
        try:
            self._authorize(request)
            parts = [part for part in request.path.split("/") if part][1:]  # after "admin"
            method = request.method
            if parts == ["models"] and method == "GET":
                return json_response({name: core.routes.require(name).to_json() for name in core.routes.models()})
            if parts == ["flush"] and method == "POST":
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(None, core.request_log.flush)
                await loop.run_in_executor(None, core.feedback_log.flush)
                return json_response({"flushed": True, "rows_written": core.request_log.rows_written})
            if len(parts) != 3 or parts[0] != "models":
                raise GatewayError(Code.NOT_FOUND, f"no admin endpoint {request.path!r}")
            model, action = parts[1], parts[2]
            wants_body = method in ("PUT", "POST") and request.can_read_body
            body = await read_json(request, self.settings.max_body_bytes) if wants_body else {}
            if not isinstance(body, dict):
                raise InvalidRequest("the admin request body must be a JSON object")
            return json_response(await self._admin_action(model, action, method, body, request))
        except GatewayError as err:
            headers = {"WWW-Authenticate": "Bearer"} if err.code is Code.UNAUTHENTICATED else None
            return gateway_error_response(err, headers)
        except UnknownModel as err:
            return error_response(404, str(err))
        except RoutingConflict as err:
            return error_response(409, str(err))
        except (RoutingError, MlopsError) as err:
            return error_response(400, str(err))
        except OSError as err:
            log.exception("admin change failed")
            return error_response(500, f"cannot write the routing state: {err}")

    async def _admin_action(self, model: str, action: str, method: str, body: dict[str, Any], request: web.Request) -> Any:
        table = self.core.routes
        loop = asyncio.get_running_loop()

        expected_revision = _field(body, "expected_revision", int, optional=True)
        if method in ("PUT", "POST"):
            # This replica may not have polled another's change yet: check versions against the latest.
            await loop.run_in_executor(None, table.refresh_from_state)

        async def run(fn: Any, *args: Any) -> Any:
            # File writes and the state file's and models.config's locks: off the event loop.
            return await loop.run_in_executor(None, table.change, model, expected_revision, fn, *args)

        if action == "policy" and method == "GET":
            return table.require(model).to_json()
        if action == "stats" and method == "GET":
            table.require(model)
            since = request.query.get("since_seconds", "300")
            try:
                seconds = float(since)
            except ValueError:
                raise InvalidRequest(f"since_seconds must be a number, got {since!r}") from None
            return self.core.stats.summary(model, seconds)
        if action == "policy" and method == "PUT":
            return (await run(table.set_policy, _field(body, "policy", str))).to_json()
        if action == "canary" and method == "PUT":
            version = _field(body, "version", int)
            await self._require_loaded(table.require(model), version, "set_canary")
            return (await run(table.set_canary, version, _field(body, "share", float))).to_json()
        if action == "share" and method == "PUT":
            return (await run(table.set_share, _field(body, "share", float))).to_json()
        if action == "promote" and method == "POST":
            version = _field(body, "version", int, optional=True)
            route = table.require(model)
            target = route.canary_version if version is None else version
            if target is not None:
                await self._require_loaded(route, target, "promote")
            return (await run(table.promote, version)).to_json()
        if action == "rollback" and method == "POST":
            route, rolled_back_from = await run(table.rollback)
            return {**route.to_json(), "rolled_back_from": rolled_back_from}
        if action == "shadow" and method == "PUT":
            version = _field(body, "version", int, optional=True)
            if version is not None:
                await self._require_loaded(table.require(model), version, "set_shadow")
            return (await run(table.set_shadow, version)).to_json()
        if action == "automation" and method == "PUT":
            band = body.get("band")
            if band is not None and (not isinstance(band, list) or len(band) != 2):
                raise InvalidRequest(f"band must be [low, high], got {band!r:.60}")
            return (await run(table.set_automation, _field(body, "mode", str), tuple(band) if band else None)).to_json()
        if action in _ADMIN_ACTIONS:
            raise MethodNotAllowed(f"no admin endpoint {method} {request.path!r}")
        raise GatewayError(Code.NOT_FOUND, f"no admin endpoint {method} {request.path!r}")

    async def _require_loaded(self, route: ModelRoute, version: int, what: str) -> None:
        """Refuses (503, retry later) to route traffic to a version the model server has not loaded.

        A pushed version appears in models.config before the model server has loaded it; traffic
        sent to it meanwhile would be answered 404. TF Serving refuses labels on such versions too.
        Only versions the routing table knows are asked about; the table reports unknown ones.
        """
        if version < 0 or (route.served_versions and version not in route.served_versions):
            return
        path = f"/v1/models/{route.model_name}/versions/{version}"
        try:
            status, raw = await self.core.rest_upstream.get(path)
        except GatewayError as err:
            raise GatewayError(Code.UNAVAILABLE, f"{what}: cannot ask the model server whether {route.model_name} version {version} "
                                                 f"is loaded: {err.message}") from None
        try:
            document = loads(raw) if status == 200 else None
        except ValueError:
            document = None
        entries = document.get("model_version_status") if isinstance(document, dict) else None
        states = [str(entry.get("state")) for entry in entries or [] if isinstance(entry, dict)]
        if "AVAILABLE" not in states:
            found = states[0] if states else f"HTTP {status}: {upstream_error_text(raw)}"
            raise GatewayError(Code.UNAVAILABLE, f"{what}: {route.model_name} version {version} is not AVAILABLE on the model server yet "
                                                 f"({found}); retry once it has loaded")


def _field(body: dict[str, Any], name: str, kind: type, *, optional: bool = False) -> Any:
    value = body.get(name)
    if value is None:
        if optional:
            return None
        raise InvalidRequest(f"the request body needs {name!r}")
    if kind is float and type(value) is int:
        value = float(value)
    if type(value) is not kind:
        raise InvalidRequest(f"{name!r} must be {'a number' if kind is float else kind.__name__}, got {value!r:.60}")
    return value
