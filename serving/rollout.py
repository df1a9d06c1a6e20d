"""`GatewayAdminClient`: the rollout DAG's handle on the gateway's admin API (docs/ARCHITECTURE.md).

Standard library only (urllib + json), so it runs in either environment (the Airflow venv or the
ML runtime) without importing the serving stack. Every call sends `Authorization: Bearer <token>`;
an error answer raises `AdminApiError` with the gateway's message and status.

Shares are fractions in [0, 1]: 5 % is 0.05.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable

from core.errors import MlopsError

# Retried only when the call surely did not change anything: the gateway refused the connection
# (restarting) or a proxy in front of it answered that it is unavailable. A timeout is not retried:
# the change may have happened, and e.g. a second promote would fail.
_RETRYABLE_STATUS = frozenset({502, 503})


class AdminApiError(MlopsError):
    """The gateway refused an admin call (`status`: HTTP status; 401/403 for a missing/wrong token)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class GatewayAdminClient:
    """Changes and reads a model's routing on a running gateway.

    `promote` is the blue-green switch (`stable` := the given version or the canary, the old
    stable kept for rollback); `rollback` is instant (canary traffic 0 and, after a promote, the
    previous stable back). Each method returns the model's policy after the change.
    """

    def __init__(self, base_url: str, token: str, *, timeout: float = 10.0, attempts: int = 3) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be the gateway's http(s) URL, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.attempts = max(1, attempts)

    # --- reads ---------------------------------------------------------------------------------
    def get_policy(self, model: str) -> dict[str, Any]:
        """Policy, canary share, shadow version, automation and band, stable/canary versions, labels."""
        return self._call("GET", f"/admin/models/{_quote(model)}/policy")

    def list_models(self) -> dict[str, dict[str, Any]]:
        return self._call("GET", "/admin/models")

    def stats(self, model: str, since_seconds: float) -> dict[str, dict[str, Any]]:
        """Per label (stable, canary, shadow, version:N) over the last `since_seconds`: requests, errors,
        error_rate, latency_p50_ms, latency_p90_ms, latency_p99_ms, mean_probability, probability_std, scored,
        positive_rate, version."""
        query = urllib.parse.urlencode({"since_seconds": since_seconds})
        return self._call("GET", f"/admin/models/{_quote(model)}/stats?{query}")

    def version_state(self, model: str, version: int) -> str | None:
        """The model server's state of `version` (AVAILABLE, LOADING, ...) as the gateway reports it; None when unknown."""
        try:
            document = self._call("GET", f"/v1/models/{_quote(model)}/versions/{int(version)}")
        except AdminApiError as err:
            if err.status == 404:
                return None
            raise
        states = [entry.get("state") for entry in document.get("model_version_status", []) if isinstance(entry, dict)]
        return "AVAILABLE" if "AVAILABLE" in states else (states[0] if states else None)

    def wait_until_available(self, model: str, version: int, timeout_s: float = 300.0, poll_s: float = 1.0,
                             progress: Callable[[str], None] | None = None) -> None:
        """Waits until the model server has loaded `version`: a push lands in models.config before
        the server has loaded it, and the gateway refuses to route traffic to it until then."""
        deadline = time.monotonic() + timeout_s
        last_said = 0.0
        while (state := self.version_state(model, version)) != "AVAILABLE":
            now = time.monotonic()
            if now > deadline:
                raise AdminApiError(f"{model} version {version} did not become AVAILABLE on the model server within "
                                    f"{timeout_s:.0f}s (state: {state or 'unknown'}); is it in models.config and loadable?")
            if progress is not None and now - last_said >= 10.0:
                progress(f"waiting for the model server to load {model}:{version} (state: {state or 'not yet known'})")
                last_said = now
            time.sleep(poll_s)

    # --- changes -------------------------------------------------------------------------------
    def set_canary(self, model: str, version: int, share: float) -> dict[str, Any]:
        """`canary` := version (written to models.config), policy canary at `share` (a fraction)."""
        return self._call("PUT", f"/admin/models/{_quote(model)}/canary", {"version": version, "share": share})

    def set_share(self, model: str, share: float) -> dict[str, Any]:
        return self._call("PUT", f"/admin/models/{_quote(model)}/share", {"share": share})

    def set_policy(self, model: str, policy: str) -> dict[str, Any]:
        """blue_green | canary | shadow (canary and shadow need their version set first)."""
        return self._call("PUT", f"/admin/models/{_quote(model)}/policy", {"policy": policy})

    def promote(self, model: str, version: int | None = None) -> dict[str, Any]:
        return self._call("POST", f"/admin/models/{_quote(model)}/promote", {"version": version})

    def rollback(self, model: str) -> dict[str, Any]:
        """The answer's `rolled_back_from` is the version taken out of `stable` (None: only canary traffic stopped)."""
        return self._call("POST", f"/admin/models/{_quote(model)}/rollback", {})

    def set_shadow(self, model: str, version: int | None) -> dict[str, Any]:
        """Shadows `version` (its answers are logged, never returned); None stops shadowing."""
        return self._call("PUT", f"/admin/models/{_quote(model)}/shadow", {"version": version})

    def set_automation(self, model: str, mode: str, band: tuple[float, float] | None = None) -> dict[str, Any]:
        """shadow | assist | partial | full; `band` = (low, high) is the uncertainty band of `partial`."""
        body: dict[str, Any] = {"mode": mode}
        if band is not None:
            body["band"] = [band[0], band[1]]
        return self._call("PUT", f"/admin/models/{_quote(model)}/automation", body)

    def flush_logs(self) -> dict[str, Any]:
        """Makes the gateway write every logged row now (before reading the logs)."""
        return self._call("POST", "/admin/flush", {})

    # --- transport -----------------------------------------------------------------------------
    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        url = self.base_url + path
        data = json.dumps(body).encode("utf-8") if body is not None else None
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        last_problem = ""
        last_status: int | None = None
        for attempt in range(1, self.attempts + 1):
            request = urllib.request.Request(url, data=data, headers=headers, method=method)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as err:
                message = _error_message(err)
                if err.code not in _RETRYABLE_STATUS:
                    raise AdminApiError(f"{method} {url}: HTTP {err.code}: {message}", status=err.code) from None
                last_problem, last_status = f"HTTP {err.code}: {message}", err.code
            except urllib.error.URLError as err:
                if not isinstance(err.reason, ConnectionRefusedError):
                    raise AdminApiError(f"{method} {url}: {err.reason}") from None
                last_problem, last_status = f"connection refused ({err.reason})", None
            except (TimeoutError, ConnectionError) as err:
                raise AdminApiError(f"{method} {url}: {type(err).__name__}: {err} (the change may or may not have happened; "
                                    f"check get_policy)") from None
            if attempt < self.attempts:
                time.sleep(0.2 * 2 ** (attempt - 1))
        if last_status is not None:
            raise AdminApiError(f"{method} {url}: {last_problem} (after {self.attempts} attempts)", status=last_status)
        raise AdminApiError(f"{method} {url}: gateway unreachable after {self.attempts} attempts ({last_problem})")


def _quote(model: str) -> str:
    return urllib.parse.quote(model, safe="")


def _error_message(err: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(err.read()).get("error", err.reason))
    except (ValueError, AttributeError):
        return str(err.reason)
