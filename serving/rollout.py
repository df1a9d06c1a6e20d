"""Rolling a model version out: the gateway's admin API and the canary judgement.

- `GatewayAdminClient`: the rollout DAG's handle on the gateway's admin API (docs/ARCHITECTURE.md).
  Every call sends `Authorization: Bearer <token>`; an error answer raises `AdminApiError` with
  the gateway's message and status. Shares are fractions in [0, 1]: 5 % is 0.05.
- `judge_canary`: the rollout policy. Given one window of the gateway's `stats` for the canary and
  the stable version, it says whether the canary is healthy and, if not, why
  (`CanaryThresholds` are the limits, `CanaryJudgement` the verdict with its evidence).
- `canary_evidence` / `evidence_markdown`: what the judged windows showed, for the person asked to
  approve a promotion (the rollout DAG's `approval=required`) and for ML Metadata.

Standard library only (urllib + json), so it runs in either environment (the Airflow venv or the
ML runtime) without importing the serving stack.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable, Mapping, Sequence

from core.errors import MlopsError

# Retried only when the call surely did not change anything: the gateway refused the connection
# (restarting) or a proxy in front of it answered that it is unavailable. A timeout is not retried:
# the change may have happened, and e.g. a second promote would fail.
_RETRYABLE_STATUS = frozenset({502, 503})
# Where admin calls go when no gateway is named, and where their token comes from.
GATEWAY_URL_ENV = "MLOPS_GATEWAY_URL"
ADMIN_TOKEN_ENV = "MLOPS_GATEWAY_ADMIN_TOKEN"
DEFAULT_GATEWAY_URL = "http://127.0.0.1:8000"
# Every replica behind the balancer, whose stats the canary judge sums: comma-separated base URLs;
# `dns+http://gateway:8000` stands for one URL per address the name resolves to (compose's service
# DNS answers one address per replica).
GATEWAY_REPLICAS_ENV = "MLOPS_GATEWAY_REPLICAS"
_DNS_PREFIX = "dns+"


def gateway_url(given: str | None = None) -> str:
    """The gateway's base URL: the one given, else $MLOPS_GATEWAY_URL, else the local default."""
    return given or os.environ.get(GATEWAY_URL_ENV) or DEFAULT_GATEWAY_URL


def gateway_replica_urls(given: str | Sequence[str] | None = None) -> list[str]:
    """The base URLs of every gateway replica: `given` (a list, or comma-separated text), else
    $MLOPS_GATEWAY_REPLICAS; [] when neither names any. `dns+<url>` entries become one URL per
    address their host resolves to, looked up now (replicas come and go with scaling)."""
    entries = os.environ.get(GATEWAY_REPLICAS_ENV, "") if given is None else given
    if isinstance(entries, str):
        entries = entries.split(",")
    urls: list[str] = []
    for entry in (entry.strip() for entry in entries):
        if not entry:
            continue
        for url in _resolved(entry[len(_DNS_PREFIX):]) if entry.startswith(_DNS_PREFIX) else [entry]:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{GATEWAY_REPLICAS_ENV}: each replica must be an http(s) URL or dns+<http(s) URL>, got {entry!r}")
            if url.rstrip("/") not in urls:
                urls.append(url.rstrip("/"))
    return urls


def _resolved(url: str) -> list[str]:
    parts = urllib.parse.urlsplit(url)
    if not parts.hostname or parts.scheme not in ("http", "https"):
        raise ValueError(f"{GATEWAY_REPLICAS_ENV}: dns+ needs an http(s) URL with a host name, got {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = sorted({info[4][0] for info in socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)})
    except socket.gaierror as err:
        raise AdminApiError(f"{GATEWAY_REPLICAS_ENV}: {parts.hostname!r} resolves to no address ({err})") from None
    return [urllib.parse.urlunsplit(parts._replace(netloc=f"[{address}]:{port}" if ":" in address else f"{address}:{port}"))
            for address in addresses]


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

    def __init__(self, base_url: str, token: str, *, timeout: float = 10.0, attempts: int = 3,
                 replicas: str | Sequence[str] | None = None) -> None:
        """`replicas`: the gateway replicas whose `stats` are summed (gateway_replica_urls; None:
        $MLOPS_GATEWAY_REPLICAS, resolved at each `stats` call). Changes go to `base_url` alone: the
        replicas share the routing state, so a change taken by one applies on all of them."""
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be the gateway's http(s) URL, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.attempts = max(1, attempts)
        self.replicas = replicas

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
        path = f"/admin/models/{_quote(model)}/stats?{query}"
        urls = gateway_replica_urls(self.replicas)
        if not urls or urls == [self.base_url]:
            return self._call("GET", path)
        # Each replica counts only the requests it answered: behind a balancer one replica's window
        # is 1/N of the traffic, too little to judge a canary on, and not the whole of it.
        return sum_replica_stats([GatewayAdminClient(url, self.token, timeout=self.timeout, attempts=self.attempts,
                                                     replicas=()).stats(model, since_seconds) for url in urls])

    def version_state(self, model: str, version: int) -> str | None:
        """The model server's state of `version` (AVAILABLE, LOADING, ...) as the gateway reports it; None when unknown."""
        return self._version_status(model, version)[0]

    def _version_status(self, model: str, version: int) -> tuple[str | None, str]:
        """(state, the load error the model server reports for it, or "")."""
        try:
            document = self._call("GET", f"/v1/models/{_quote(model)}/versions/{int(version)}")
        except AdminApiError as err:
            if err.status == 404:
                return None, ""
            raise
        entries = [entry for entry in document.get("model_version_status", []) if isinstance(entry, dict)]
        states = [entry.get("state") for entry in entries]
        if "AVAILABLE" in states:
            return "AVAILABLE", ""
        if not entries:
            return None, ""
        status = entries[0].get("status") or {}
        return entries[0].get("state"), str(status.get("error_message") or "") if isinstance(status, dict) else ""

    def wait_until_available(self, model: str, version: int, timeout_s: float = 300.0, poll_s: float = 1.0,
                             progress: Callable[[str], None] | None = None) -> None:
        """Waits until the model server has loaded `version`: a push lands in models.config before
        the server has loaded it, and the gateway refuses to route traffic to it until then. A
        version whose load failed raises at once with the server's error."""
        deadline = time.monotonic() + timeout_s
        last_said = 0.0
        while (status := self._version_status(model, version))[0] != "AVAILABLE":
            state, error = status
            if state == "END" and error:
                # The server tried and failed (a corrupt or half-copied version directory); it retries
                # only when the directory changes, so waiting out the timeout would only delay the news.
                raise AdminApiError(f"{model} version {version} failed to load on the model server: {error}")
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


def sum_replica_stats(per_replica: Sequence[Mapping[str, Mapping[str, Any]]]) -> dict[str, dict[str, Any]]:
    """The `stats` of several replicas over the same window as one gateway's, per label.

    Counts add; rates and the mean probability are weighted by what they are rates of; the spread
    is the pooled (population) standard deviation, as one replica computes it over all the scores.
    Latency quantiles cannot be merged from quantiles: the largest replica's is reported, an upper
    bound of the merged quantile (the judge's latency check only gets stricter). `version` is the
    one most requests went to (replicas differ only while one has not polled a change yet);
    `replicas` says how many replicas saw the label.
    """
    labels = sorted({label for stats in per_replica for label in stats})
    return {label: _summed_label([stats[label] for stats in per_replica if label in stats]) for label in labels}


def _summed_label(parts: list[Mapping[str, Any]]) -> dict[str, Any]:
    requests = sum(int(part.get("requests") or 0) for part in parts)
    errors = sum(int(part.get("errors") or 0) for part in parts)
    scored_parts = [part for part in parts if int(part.get("scored") or 0) > 0 and _finite(part.get("mean_probability"))]
    scored = sum(int(part["scored"]) for part in scored_parts)
    mean = std = positive_rate = None
    if scored:
        mean = sum(float(part["mean_probability"]) * int(part["scored"]) for part in scored_parts) / scored
        if all(_finite(part.get("probability_std")) for part in scored_parts):
            mean_square = sum((float(part["probability_std"]) ** 2 + float(part["mean_probability"]) ** 2) * int(part["scored"])
                              for part in scored_parts) / scored
            std = math.sqrt(max(mean_square - mean * mean, 0.0))
        if all(_finite(part.get("positive_rate")) for part in scored_parts):
            positive_rate = sum(float(part["positive_rate"]) * int(part["scored"]) for part in scored_parts) / scored
    requests_per_version: dict[Any, int] = {}
    for part in parts:
        requests_per_version[part.get("version")] = requests_per_version.get(part.get("version"), 0) + int(part.get("requests") or 0)
    summed: dict[str, Any] = {"requests": requests, "errors": errors, "error_rate": errors / requests if requests else 0.0}
    for quantile in ("p50", "p90", "p99"):
        values = [float(part[f"latency_{quantile}_ms"]) for part in parts if _finite(part.get(f"latency_{quantile}_ms"))]
        summed[f"latency_{quantile}_ms"] = max(values) if values else None
    summed.update({"mean_probability": mean, "probability_std": std, "scored": scored, "positive_rate": positive_rate,
                   "version": max(requests_per_version, key=lambda version: requests_per_version[version]),
                   "replicas": len(parts)})
    return summed


def _quote(model: str) -> str:
    return urllib.parse.quote(model, safe="")


def _error_message(err: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(err.read()).get("error", err.reason))
    except (ValueError, AttributeError):
        return str(err.reason)


# ---------------------------------------------------------------------------------------------
# The canary judgement
# ---------------------------------------------------------------------------------------------

# Below this many requests on either side a p99 is just the slowest request; p90 is compared instead.
MIN_REQUESTS_FOR_P99 = 100


@dataclasses.dataclass(frozen=True)
class CanaryThresholds:
    """The limits a canary's window must stay within to be ramped on (the rollout DAG's Param defaults)."""

    max_error_rate: float = 0.02
    max_p99_latency_ratio: float = 1.5
    # Latency differences below this are noise on any real network, whatever their ratio.
    latency_tolerance_ms: float = 10.0
    max_mean_probability_shift: float = 0.1
    # A shift must also stand out from sampling noise by this many standard errors.
    min_shift_z_score: float = 3.0
    min_canary_requests: int = 20

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "CanaryThresholds":
        """The thresholds named in `values` (e.g. the rollout DAG's params), the defaults for the others."""
        return cls(**{field.name: type(field.default)(values.get(field.name, field.default))
                      for field in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True)
class CanaryJudgement:
    """The verdict on one window: healthy or not, why not, and the stats of both sides it was based on."""

    healthy: bool
    reasons: list[str]
    canary: dict[str, Any]
    stable: dict[str, Any]

    def summary(self) -> str:
        """One line with what each side saw: requests, error rate, p99 latency, mean score."""
        def side(stats: Mapping[str, Any]) -> str:
            mean, p99 = stats.get("mean_probability"), stats.get("latency_p99_ms")
            return (f"{stats.get('requests', 0)} requests, error rate {float(stats.get('error_rate') or 0):.3f}, "
                    f"p99 {float(p99):.1f} ms, mean score {float(mean):.3f}" if _finite(mean) and _finite(p99)
                    else f"{stats.get('requests', 0)} requests")

        return f"canary {side(self.canary)}; stable {side(self.stable)}"


def judge_canary(stats: Mapping[str, Mapping[str, Any]], thresholds: CanaryThresholds) -> CanaryJudgement:
    """Compares the canary's window of traffic with the stable version's: errors, tail latency, predictions.

    Too little canary traffic is a failure too: promoting a model nobody has exercised is a guess.
    The comparisons are built not to roll back a healthy canary on noise: the tail latency is p99
    only with enough requests (p90 otherwise) and must exceed the ratio by more than a tolerance;
    a shift of the mean probability must exceed its threshold and be significant given the spread
    of the scores on both sides (a two-sample z-test when the gateway reports the spread).
    """
    canary = dict(stats.get("canary") or {})
    stable = dict(stats.get("stable") or {})
    reasons: list[str] = []
    requests = int(canary.get("requests") or 0)
    if requests < thresholds.min_canary_requests:
        reasons.append(f"only {requests} requests reached the canary (at least {thresholds.min_canary_requests} needed to judge it)")
        return CanaryJudgement(False, reasons, canary, stable)
    error_rate = float(canary.get("error_rate") or 0.0)
    if error_rate > thresholds.max_error_rate:
        reasons.append(f"error rate {error_rate:.3f} > {thresholds.max_error_rate:.3f}")
    reasons.extend(_latency_problems(canary, stable, thresholds))
    reasons.extend(_prediction_shift_problems(canary, stable, thresholds))
    return CanaryJudgement(not reasons, reasons, canary, stable)


def _latency_problems(canary: Mapping[str, Any], stable: Mapping[str, Any], thresholds: CanaryThresholds) -> list[str]:
    fewest = min(int(canary.get("requests") or 0), int(stable.get("requests") or 0))
    quantile = "p99" if fewest >= MIN_REQUESTS_FOR_P99 or canary.get("latency_p90_ms") is None else "p90"
    canary_latency, stable_latency = canary.get(f"latency_{quantile}_ms"), stable.get(f"latency_{quantile}_ms")
    if not (_finite(canary_latency) and _finite(stable_latency)) or stable_latency <= 0:
        return []
    limit = thresholds.max_p99_latency_ratio * float(stable_latency) + thresholds.latency_tolerance_ms
    if float(canary_latency) <= limit:
        return []
    ratio = float(canary_latency) / float(stable_latency)
    return [f"{quantile} latency {float(canary_latency):.1f} ms is {ratio:.2f}x the stable version's {float(stable_latency):.1f} ms "
            f"(max {thresholds.max_p99_latency_ratio:.2f}x + {thresholds.latency_tolerance_ms:.0f} ms)"]


def _prediction_shift_problems(canary: Mapping[str, Any], stable: Mapping[str, Any], thresholds: CanaryThresholds) -> list[str]:
    canary_mean, stable_mean = canary.get("mean_probability"), stable.get("mean_probability")
    if not (_finite(canary_mean) and _finite(stable_mean)):
        return []
    shift = abs(float(canary_mean) - float(stable_mean))
    if shift <= thresholds.max_mean_probability_shift:
        return []
    evidence = ""
    standard_error = _standard_error_of_difference(canary, stable)
    if standard_error is not None:
        z_score = shift / standard_error if standard_error > 0 else math.inf
        if z_score < thresholds.min_shift_z_score:
            return []  # as large a difference is likely between two random samples of the same model
        evidence = f", {z_score:.1f} standard errors" if math.isfinite(z_score) else ""
    return [f"mean predicted probability moved by {shift:.3f} ({float(stable_mean):.3f} -> {float(canary_mean):.3f}; "
            f"max {thresholds.max_mean_probability_shift:.3f}{evidence})"]


def _standard_error_of_difference(canary: Mapping[str, Any], stable: Mapping[str, Any]) -> float | None:
    terms = []
    for side in (canary, stable):
        std, count = side.get("probability_std"), side.get("scored")
        if not _finite(std) or not isinstance(count, int) or count <= 0:
            return None
        terms.append(float(std) ** 2 / count)
    return math.sqrt(sum(terms))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ---------------------------------------------------------------------------------------------
# The evidence a person approves a promotion on
# ---------------------------------------------------------------------------------------------


def canary_evidence(observations: list[Mapping[str, Any]], paired: Mapping[str, Any] | None) -> dict[str, Any]:
    """What the judged windows showed, side by side, small enough for an MLMD property and an approval form.

    One entry per judged share: requests, error rates, the tail latency ratio (the quantile the
    judge used) and the shift of the mean probability, with the judge's verdict; then the paired
    comparison (stable's answers to the canaried requests, or the candidate shadowing stable) when it ran.
    """
    windows = []
    for observation in observations:
        canary, stable = dict(observation.get("canary") or {}), dict(observation.get("stable") or {})
        fewest = min(int(canary.get("requests") or 0), int(stable.get("requests") or 0))
        quantile = "p99" if fewest >= MIN_REQUESTS_FOR_P99 else "p90"
        canary_latency, stable_latency = canary.get(f"latency_{quantile}_ms"), stable.get(f"latency_{quantile}_ms")
        canary_mean, stable_mean = canary.get("mean_probability"), stable.get("mean_probability")
        windows.append({
            "share": observation.get("share"), "healthy": bool(observation.get("healthy")),
            "reasons": list(observation.get("reasons") or []),
            "canary_requests": int(canary.get("requests") or 0), "stable_requests": int(stable.get("requests") or 0),
            "canary_error_rate": _rounded(canary.get("error_rate")), "stable_error_rate": _rounded(stable.get("error_rate")),
            "latency_quantile": quantile,
            "latency_ratio": _rounded(float(canary_latency) / float(stable_latency))
            if _finite(canary_latency) and _finite(stable_latency) and stable_latency > 0 else None,
            "mean_probability_shift": _rounded(float(canary_mean) - float(stable_mean))
            if _finite(canary_mean) and _finite(stable_mean) else None,
        })
    evidence: dict[str, Any] = {"windows": windows}
    if paired and "pairs" in paired:  # absent when the comparison could not run (no pipeline run to record it in)
        evidence["paired"] = {key: paired.get(key) for key in ("pairs", "judged", "agreement", "diverged", "reasons", "report",
                                                               "paired_from")}
    return evidence


def evidence_markdown(model: str, version: int, stable: int | None, evidence: Mapping[str, Any]) -> str:
    """The approval form's body: the judged windows as a table, the paired comparison, what each answer does."""
    lines = [f"**{model}:{version}** (canary) against **{model}:{stable}** (stable). Every judged window was healthy; "
             "the canary gets no traffic while it waits for this answer.", "",
             "| share | requests canary / stable | error rate canary / stable | latency ratio | mean probability shift |",
             "|---|---|---|---|---|"]
    for window in evidence.get("windows", []):
        ratio, shift = window.get("latency_ratio"), window.get("mean_probability_shift")
        latency = f"{ratio:.2f}x ({window.get('latency_quantile')})" if ratio is not None else "n/a"
        lines.append(
            f"| {window.get('share')} % | {window.get('canary_requests')} / {window.get('stable_requests')} "
            f"| {_number(window.get('canary_error_rate'))} / {_number(window.get('stable_error_rate'))} "
            f"| {latency} | {f'{shift:+.3f}' if shift is not None else 'n/a'} |")
    paired = evidence.get("paired")
    if paired:
        verdict = "**DIVERGED**: " + "; ".join(paired.get("reasons") or []) if paired.get("diverged") else "within the limits"
        source = paired.get("paired_from") or "shadow window"
        how = "stable also answered the canaried requests" if source == "canaried requests" else "the canary shadowed stable"
        lines += ["", f"Paired comparison ({how}, same requests): {paired.get('pairs')} requests, "
                      f"decision agreement {_number(paired.get('agreement'))}; {verdict}. Report: `{paired.get('report')}`"]
    else:
        lines += ["", "Paired comparison: not run (no prediction logs to compare)."]
    lines += ["", "**Approve** promotes the canary to stable. **Reject** sets its traffic to 0 and leaves stable "
                  "untouched; no answer before the timeout does the same."]
    return "\n".join(lines)


def _rounded(value: Any) -> float | None:
    return round(float(value), 5) if _finite(value) else None


def _number(value: Any) -> str:
    return f"{float(value):.3f}" if _finite(value) else "n/a"
