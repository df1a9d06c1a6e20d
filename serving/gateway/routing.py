"""Where each request goes, and what the gateway tells the caller about the model's answer.

Policies (per model):
- `blue_green`: everything to the `stable` version; a promote moves `stable` in one step and
  keeps the old one for an instant rollback.
- `canary`: `canary_share` of the traffic (a fraction, 0.05 = 5 %) to the `canary` version. With
  a request key the choice is a hash of (model, key), so a key always lands on the same side and
  raising the share only moves keys from stable to canary, never back. Without a key it is random.
- `shadow`: everything to `stable`; the `shadow_version` gets a copy whose answer is only logged.

Automation (per model): `shadow` (answer logged, decision `none`, model output withheld),
`assist` (the model's answer is returned as a suggestion), `partial` (decide outside the
uncertainty band [low, high], else `refer_to_human`), `full` (the model decides).

The gateway routes by explicit version numbers, not by labels: a promote or rollback takes effect
on the next request, without waiting for the model server to re-read `models.config`. The labels
in `models.config` are still written (they are the source of truth for what is served and what
the model server's own label paths mean) and re-read periodically, so a change made by someone
else (a push setting the first `stable`) reaches the gateway too.

Policy settings persist in a small JSON state file (atomic writes), so a restart keeps them. The
file is also what replicas share (issue 14): every gateway re-reads it when it changes (checked every
`policy_poll_seconds`, as TF Serving polls models.config), so a change made on one replica routes on
every other within that interval. A change is a read-modify-write under an exclusive `flock` on
`.<state file>.lock`: the replica taking it first re-reads the file (it may be stale), applies the
change to what it read and writes `revision + 1`, so two replicas changing at once never lose each
other's change. Each model's entry carries its own `revision`; an admin call that names the
revision it saw (`expected_revision`) is refused with `RoutingConflict` (HTTP 409) when another
change came first, so a controller never acts on a policy it has not seen.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import random
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from core import atomic
from core.errors import DataError
from serving.gateway.config import AUTOMATION_MODES, POLICIES, GatewayConfigError, ModelPolicy, check_policy_values
from transforms.features import DECISION_BIG_TIPPER, DECISION_NONE, DECISION_NOT_BIG_TIPPER, DECISION_REFER_TO_HUMAN

log = logging.getLogger(__name__)

STABLE = "stable"
CANARY = "canary"
SHADOW = "shadow"
STATE_FORMAT = 1
_SHARE_BUCKETS = 10_000


class RoutingError(DataError):
    """An admin change that cannot be applied (the message says why); nothing was changed."""


class UnknownModel(RoutingError):
    """The model is neither in models.config nor in the gateway config."""


class RoutingConflict(RoutingError):
    """The change was asked against a revision of the model's policy that another change replaced."""


@dataclasses.dataclass(frozen=True)
class ModelRoute:
    """One model's routing snapshot. Never mutated: a change swaps in a new object (lock-free reads)."""

    model_name: str
    policy: str = "blue_green"
    canary_share: float = 0.0
    shadow_version: int | None = None
    automation: str = "full"
    band: tuple[float, float] = (0.4, 0.6)
    stable_version: int | None = None
    canary_version: int | None = None
    # The stable version before the last promote: what a rollback restores (None: nothing to undo).
    previous_stable: int | None = None
    labels: Mapping[str, int] = dataclasses.field(default_factory=dict)
    served_versions: tuple[int, ...] = ()
    # Bumped by every admin change of this model, on whichever replica: what `expected_revision` names.
    revision: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "revision": self.revision,
            "policy": self.policy,
            "canary_share": self.canary_share,
            "shadow_version": self.shadow_version,
            "automation": self.automation,
            "band": list(self.band),
            "stable_version": self.stable_version,
            "canary_version": self.canary_version,
            "previous_stable": self.previous_stable,
            "labels": dict(self.labels),
            "served_versions": list(self.served_versions),
        }


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """Where one request (or its shadow copy) goes. `version` None lets the model server choose."""

    label: str
    version: int | None


def canary_bucket(model_name: str, request_key: str) -> int:
    """A stable bucket in [0, 10000) for (model, key): the same key always gets the same bucket."""
    digest = hashlib.blake2b(f"{model_name}\0{request_key}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % _SHARE_BUCKETS


def choose_target(route: ModelRoute, request_key: str | None, rng: random.Random | None = None) -> Target:
    """The version that answers the caller under the model's policy."""
    if route.policy == "canary" and route.canary_version is not None and route.canary_share > 0:
        threshold = route.canary_share * _SHARE_BUCKETS
        if request_key is not None:
            to_canary = canary_bucket(route.model_name, request_key) < threshold
        else:
            to_canary = (rng or random).random() * _SHARE_BUCKETS < threshold
        if to_canary:
            return Target(CANARY, route.canary_version)
    return Target(STABLE, route.stable_version)


def shadow_target(route: ModelRoute, served: Target | None = None, pair_canary: bool = False) -> Target | None:
    """The version that gets a copy of the request (answer logged as shadow, never returned), if any.

    Policy shadow: the shadow version. Policy canary with `pair_canary`: a request the canary
    answered (`served`) is also asked of stable, so the canary's own traffic is compared with
    stable on the same requests (monitoring/paired.py) without a separate shadow window.
    """
    if route.policy == SHADOW and route.shadow_version is not None:
        return Target(SHADOW, route.shadow_version)
    if (pair_canary and route.policy == "canary" and served is not None and served.label == CANARY
            and route.stable_version is not None and served.version != route.stable_version):
        return Target(SHADOW, route.stable_version)
    return None


def decide(automation: str, band: tuple[float, float], probability: float | None, predicted_class: int | None) -> str:
    """The per-instance decision the gateway returns and logs."""
    if automation == "shadow":
        return DECISION_NONE
    if probability is None:
        # No usable number from the model: a person has to look, whatever the automation level.
        return DECISION_REFER_TO_HUMAN
    if automation == "partial" and band[0] <= probability <= band[1]:
        return DECISION_REFER_TO_HUMAN
    positive = predicted_class == 1 if predicted_class is not None else probability >= 0.5
    return DECISION_BIG_TIPPER if positive else DECISION_NOT_BIG_TIPPER


# --- the routing table: snapshots, admin changes, persistence ---------------------------------------


class RoutingTable:
    """All models' routes, their persisted policy state and the labels in models.config.

    Reads (`route`) are a dict lookup of an immutable snapshot. Changes take a lock, write
    models.config (if there is one) and the state file atomically, then swap the snapshot.
    """

    def __init__(self, *, state_file: Path, model_config_file: Path | None, initial: Mapping[str, ModelPolicy]) -> None:
        self.state_file = Path(state_file)
        self.model_config_file = Path(model_config_file) if model_config_file is not None else None
        self._initial = dict(initial)
        self._lock = threading.RLock()
        self._holding_file_lock = False
        self._routes: dict[str, ModelRoute] = {}
        self._config_signature: tuple[int, int, int] | None = None
        # What models.config says per model (labels, served versions): applied over the state file's routes.
        self._config_views: dict[str, tuple[dict[str, int], tuple[int, ...]]] = {}
        self._state_revision = -1  # nothing read yet; a file written before revisions existed has 0
        for name, policy in self._initial.items():
            self._routes[name] = _route_from_policy(name, policy)
        self.refresh_from_model_config(force=True)
        # A bad state file stops the start (fix or delete it); later, a bad one keeps the last good state.
        self.refresh_from_state(strict=True)

    # --- reads ------------------------------------------------------------------------------
    def route(self, model_name: str) -> ModelRoute | None:
        return self._routes.get(model_name)

    def models(self) -> list[str]:
        return sorted(self._routes)

    @property
    def state_revision(self) -> int:
        """The state file's revision this replica routes by (every write anywhere adds one)."""
        return max(self._state_revision, 0)

    def require(self, model_name: str) -> ModelRoute:
        route = self._routes.get(model_name)
        if route is None:
            raise UnknownModel(f"model {model_name!r} is not served by this gateway (models: {self.models()})")
        return route

    # --- models.config ------------------------------------------------------------------------
    def refresh_from_model_config(self, *, force: bool = False) -> bool:
        """Re-reads models.config if it changed; True when a route changed. A bad file keeps the last good state."""
        if self.model_config_file is None:
            return False
        try:
            stat = self.model_config_file.stat()
        except FileNotFoundError:
            return False
        signature = (stat.st_ino, stat.st_mtime_ns, stat.st_size)  # the inode: every atomic write is a new file
        if not force and signature == self._config_signature:
            return False
        from serving import model_config as mc

        try:
            config = mc.read_model_config(self.model_config_file)
            found = {
                model.name: (mc.labels(config, model.name), tuple(mc.served_versions(config, model.name)))
                for model in config.model_config_list.config
            }
        except DataError as err:
            log.warning("keeping the previous routes: %s", err)
            return False
        changed = False
        with self._lock:
            self._config_signature = signature
            self._config_views = {name: (dict(labels), served) for name, (labels, served) in found.items()}
            for name, (labels, served) in found.items():
                current = self._routes.get(name) or _route_from_policy(name, self._initial.get(name, ModelPolicy()))
                updated = _with_labels(current, labels, served)
                if updated != self._routes.get(name):
                    self._routes[name] = updated
                    changed = True
        return changed

    def _write_labels(self, model_name: str, *, stable: int | None = None, canary: int | None | str = "keep") -> None:
        """Moves `stable` and/or `canary` in models.config (canary None removes it), under its lock."""
        if self.model_config_file is None:
            return
        from serving import model_config as mc

        def edit(config: Any) -> None:
            if stable is not None:
                mc.set_label(config, model_name, mc.STABLE_LABEL, stable)
            if canary is None:
                mc.remove_label(config, model_name, mc.CANARY_LABEL)
            elif canary != "keep":
                mc.set_label(config, model_name, mc.CANARY_LABEL, int(canary))

        try:
            mc.update_model_config(self.model_config_file, edit)
        except mc.ModelConfigError as err:
            raise RoutingError(str(err)) from None
        except OSError as err:
            raise OSError(f"cannot update {self.model_config_file} (the gateway needs write access to it and its folder "
                          f"for promote/rollback/set_canary): {err}") from err
        self.refresh_from_model_config(force=True)

    def _check_served(self, route: ModelRoute, version: int, what: str) -> None:
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise RoutingError(f"{what}: version must be a non-negative integer, got {version!r}")
        if self.model_config_file is not None and route.served_versions and version not in route.served_versions:
            raise RoutingError(
                f"{what}: model {route.model_name!r} version {version} is not served "
                f"(served versions: {list(route.served_versions)}); push it first"
            )

    # --- admin changes ------------------------------------------------------------------------
    def set_canary(self, model_name: str, version: int, share: float) -> ModelRoute:
        """Starts a canary: `canary` := version, policy canary at `share`. Clears the rollback target:
        the current stable is now the baseline a rollback keeps."""
        with self._exclusive():
            route = self.require(model_name)
            self._check_served(route, version, "set_canary")
            check_policy_values("canary", share, route.automation, route.band, route.shadow_version)
            if version == route.stable_version:
                raise RoutingError(f"set_canary: version {version} is already the stable version of {model_name!r}")
            self._write_labels(model_name, canary=version)
            route = self.require(model_name)
            return self._commit(dataclasses.replace(
                route, policy="canary", canary_share=float(share), canary_version=version, previous_stable=None,
            ), "set_canary", version=version, share=share)

    def set_share(self, model_name: str, share: float) -> ModelRoute:
        """Changes the canary share (0 stops canary traffic but keeps the canary version)."""
        with self._exclusive():
            route = self.require(model_name)
            check_policy_values("canary", share, route.automation, route.band, route.shadow_version)
            if route.canary_version is None:
                raise RoutingError(f"set_share: model {model_name!r} has no canary version; call set_canary first")
            return self._commit(dataclasses.replace(route, policy="canary", canary_share=float(share)), "set_share", share=share)

    def set_policy(self, model_name: str, policy: str) -> ModelRoute:
        """Switches the policy, keeping shares and versions (canary needs a canary, shadow a shadow version)."""
        with self._exclusive():
            route = self.require(model_name)
            if policy not in POLICIES:
                raise RoutingError(f"set_policy: policy must be one of {list(POLICIES)}, got {policy!r}")
            if policy == "canary" and route.canary_version is None:
                raise RoutingError(f"set_policy: model {model_name!r} has no canary version; call set_canary first")
            if policy == SHADOW and route.shadow_version is None:
                raise RoutingError(f"set_policy: model {model_name!r} has no shadow version; call set_shadow first")
            return self._commit(dataclasses.replace(route, policy=policy), "set_policy", policy=policy)

    def promote(self, model_name: str, version: int | None = None) -> ModelRoute:
        """Blue-green switch: `stable` := version (default: the canary); the old stable is kept for rollback."""
        with self._exclusive():
            route = self.require(model_name)
            target = route.canary_version if version is None else version
            if target is None:
                raise RoutingError(f"promote: model {model_name!r} has no canary version and no version was given")
            self._check_served(route, target, "promote")
            old_stable = route.stable_version
            if target == old_stable:
                raise RoutingError(f"promote: version {target} is already the stable version of {model_name!r}")
            self._write_labels(model_name, stable=target, canary=None if route.canary_version == target else "keep")
            route = self.require(model_name)
            canary_version = None if route.canary_version == target else route.canary_version
            return self._commit(dataclasses.replace(
                route, policy="blue_green", canary_share=0.0, stable_version=target, canary_version=canary_version,
                previous_stable=old_stable, shadow_version=None if route.shadow_version == target else route.shadow_version,
            ), "promote", version=target, previous_stable=old_stable)

    def rollback(self, model_name: str) -> tuple[ModelRoute, int | None]:
        """Instant: canary traffic 0 and, after a promote, `stable` := the previous stable.

        Returns the new route and the version rolled back from (None when no promote was undone).
        Calling it twice is harmless: the second call finds nothing to undo.
        """
        with self._exclusive():
            route = self.require(model_name)
            restored_from = None
            stable = route.stable_version
            if route.previous_stable is not None:
                self._check_served(route, route.previous_stable, "rollback")
                restored_from, stable = route.stable_version, route.previous_stable
                self._write_labels(model_name, stable=stable)
                route = self.require(model_name)
            policy = SHADOW if route.policy == SHADOW else "blue_green"
            return self._commit(dataclasses.replace(
                route, policy=policy, canary_share=0.0, stable_version=stable, previous_stable=None,
            ), "rollback", restored_stable=stable, rolled_back_from=restored_from), restored_from

    def set_shadow(self, model_name: str, version: int | None) -> ModelRoute:
        """Shadows `version` (policy shadow), or with None stops shadowing (policy blue_green)."""
        with self._exclusive():
            route = self.require(model_name)
            if version is None:
                return self._commit(dataclasses.replace(route, policy="blue_green", shadow_version=None, canary_share=0.0),
                                    "set_shadow", version=None)
            self._check_served(route, version, "set_shadow")
            return self._commit(dataclasses.replace(route, policy=SHADOW, shadow_version=version, canary_share=0.0),
                                "set_shadow", version=version)

    def set_automation(self, model_name: str, mode: str, band: tuple[float, float] | None = None) -> ModelRoute:
        with self._exclusive():
            route = self.require(model_name)
            band = tuple(band) if band is not None else route.band  # type: ignore[assignment]
            if mode not in AUTOMATION_MODES:
                raise RoutingError(f"set_automation: mode must be one of {list(AUTOMATION_MODES)}, got {mode!r}")
            try:
                check_policy_values(route.policy, route.canary_share, mode, band, route.shadow_version)
            except GatewayConfigError as err:
                raise RoutingError(f"set_automation: {err}") from None
            return self._commit(dataclasses.replace(route, automation=mode, band=(float(band[0]), float(band[1]))),
                                "set_automation", mode=mode, band=list(band))

    def change(self, model_name: str, expected_revision: int | None, action: Callable[..., Any], *args: Any) -> Any:
        """Runs the admin change `action(model_name, *args)` (a method of this table) if the model's
        policy is still at `expected_revision` (None: whatever it is now); RoutingConflict otherwise."""
        with self._exclusive():
            route = self.require(model_name)
            if expected_revision is not None and expected_revision != route.revision:
                raise RoutingConflict(
                    f"the policy of {model_name!r} changed since revision {expected_revision} (now {route.revision}, "
                    f"changed on this or another gateway replica); read it again (GET /admin/models/{model_name}/policy) "
                    f"and retry if the change still makes sense"
                )
            return action(model_name, *args)

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Holds this process's lock and the state file's flock (re-entrant within one change), with
        the routes freshly read from the state file and models.config: another replica may have
        changed them since the last poll."""
        with self._lock:
            if self._holding_file_lock:
                yield
                return
            from serving import model_config as mc

            with mc.exclusive_lock(mc.lock_path(self.state_file)):
                self._holding_file_lock = True
                try:
                    self.refresh_from_state()
                    yield
                finally:
                    self._holding_file_lock = False

    def _commit(self, route: ModelRoute, action: str, **details: Any) -> ModelRoute:
        route = dataclasses.replace(route, revision=route.revision + 1)
        routes = dict(self._routes)
        routes[route.model_name] = route
        self._save_state(routes, self.state_revision + 1)
        self._routes = routes
        log.info("routing change %s on %s (revision %d): %s", action, route.model_name, route.revision, details)
        return route

    # --- the state file ---------------------------------------------------------------------
    def refresh_from_state(self, *, strict: bool = False) -> bool:
        """Re-reads the state file and takes it if another writer (replica) changed it since; True
        when routes changed.

        The file is read every time (a few hundred bytes): its revision, not its stat, says whether
        it changed, because an atomic rewrite can reuse the inode, mtime tick and size of the last.
        A missing file changes nothing. A bad one raises DataError with `strict` (at start), else is
        logged and the last good state kept, as with models.config.
        """
        try:
            revision, saved = self._load_state()
            restored = {name: _route_from_state(name, values, self.state_file) for name, values in saved.items()}
        except FileNotFoundError:
            return False
        except DataError as err:
            if strict:
                raise
            log.warning("keeping the previous routing policy: %s", err)
            return False
        with self._lock:
            if revision <= self._state_revision:
                return False  # what this replica routes by already (its own write), or older: a poll racing a change
            # models.config is written before the state file, so reading it now sees the labels this
            # state was written with (never older ones).
            self.refresh_from_model_config(force=True)
            routes = dict(self._routes)
            for name, route in restored.items():
                view = self._config_views.get(name)
                routes[name] = _with_labels(route, *view) if view is not None else route
            changed = routes != self._routes
            self._routes, self._state_revision = routes, revision
        if changed:
            log.info("routing policy re-read from %s (revision %d)", self.state_file, revision)
        return changed

    def _load_state(self) -> tuple[int, dict[str, dict[str, Any]]]:
        try:
            document = json.loads(self.state_file.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise DataError(f"{self.state_file}: gateway state is not valid JSON ({err}); fix or delete it") from None
        if not isinstance(document, dict) or document.get("format") != STATE_FORMAT or not isinstance(document.get("models"), dict):
            raise DataError(f"{self.state_file}: expected {{\"format\": {STATE_FORMAT}, \"models\": {{...}}}}; fix or delete it")
        revision = document.get("revision", 0)  # files written before replicas shared them have none
        if isinstance(revision, bool) or not isinstance(revision, int) or revision < 0:
            raise DataError(f"{self.state_file}: revision must be a non-negative integer, got {revision!r}; fix or delete it")
        return revision, document["models"]

    def _save_state(self, routes: Mapping[str, ModelRoute], revision: int) -> None:
        document = {
            "format": STATE_FORMAT,
            "revision": revision,
            "saved_at": time.time(),
            "models": {
                name: {key: value for key, value in route.to_json().items() if key not in ("model", "labels", "served_versions")}
                for name, route in sorted(routes.items())
            },
        }
        atomic.write_json(self.state_file, document)
        self._state_revision = revision


def _route_from_policy(name: str, policy: ModelPolicy) -> ModelRoute:
    return ModelRoute(
        model_name=name, policy=policy.policy, canary_share=policy.canary_share, shadow_version=policy.shadow_version,
        automation=policy.automation, band=policy.band,
    )


def _route_from_state(name: str, values: Any, source: Path) -> ModelRoute:
    where = f"{source}: models.{name}"
    if not isinstance(values, dict):
        raise DataError(f"{where} must be an object")
    try:
        policy = ModelPolicy(
            policy=values.get("policy", "blue_green"), canary_share=values.get("canary_share", 0.0),
            shadow_version=values.get("shadow_version"), automation=values.get("automation", "full"),
            band=tuple(values.get("band", (0.4, 0.6))),
        )
    except (GatewayConfigError, TypeError) as err:
        raise DataError(f"{where}: {err}") from None
    versions = {}
    for key in ("stable_version", "canary_version", "previous_stable", "revision"):
        value = values.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise DataError(f"{where}.{key} must be a non-negative integer or null, got {value!r}")
        versions[key] = value if value is not None or key != "revision" else 0
    return dataclasses.replace(_route_from_policy(name, policy), **versions)


def _with_labels(route: ModelRoute, labels: Mapping[str, int], served: tuple[int, ...]) -> ModelRoute:
    """`route` with the versions models.config says: `stable` (default: the highest served) and `canary`."""
    stable = labels.get(STABLE, served[-1] if served else route.stable_version)
    canary = labels.get(CANARY)
    policy, share = route.policy, route.canary_share
    if canary is None and policy == "canary":
        policy, share = "blue_green", 0.0  # the canary label was removed elsewhere: no canary traffic
    return dataclasses.replace(
        route, labels=dict(labels), served_versions=served, stable_version=stable, canary_version=canary,
        policy=policy, canary_share=share,
    )


# --- traffic statistics per label (for the rollout's decisions) -------------------------------------


class TrafficStats:
    """Recent outcomes per (model, label): requests, errors, latency percentiles, mean probability.

    Kept in memory, bounded by age (`max_age_s`) and count per label; served from the event loop
    thread only (no lock needed).
    """

    def __init__(self, max_age_s: float = 3_600.0, max_entries_per_label: int = 200_000) -> None:
        self.max_age_s = max_age_s
        self.max_entries = max_entries_per_label
        # (model, label) -> deque of (monotonic time, status, latency_ms, probability sum, instances, positives, version,
        #                            sum of squared probabilities)
        self._entries: dict[tuple[str, str], collections.deque] = {}

    def record(self, model: str, label: str, version: int | None, status: int, latency_ms: float,
               probability_sum: float, scored: int, positives: int, probability_square_sum: float = 0.0) -> None:
        key = (model, label)
        entries = self._entries.get(key)
        if entries is None:
            entries = self._entries[key] = collections.deque(maxlen=self.max_entries)
        now = time.monotonic()
        entries.append((now, status, latency_ms, probability_sum, scored, positives, version, probability_square_sum))
        horizon = now - self.max_age_s
        while entries and entries[0][0] < horizon:
            entries.popleft()

    def summary(self, model: str, since_seconds: float) -> dict[str, dict[str, Any]]:
        """Per label over the last `since_seconds`: the numbers `GatewayAdminClient.stats` returns."""
        if not since_seconds > 0:
            raise RoutingError(f"since_seconds must be > 0, got {since_seconds!r}")
        horizon = time.monotonic() - since_seconds
        result: dict[str, dict[str, Any]] = {}
        for (name, label), entries in self._entries.items():
            if name != model:
                continue
            times = [entry[0] for entry in entries]
            recent = list(entries)[bisect.bisect_left(times, horizon):]
            if not recent:
                continue
            errors = sum(1 for entry in recent if entry[1] >= 500)
            latencies = sorted(entry[2] for entry in recent)
            scored = sum(entry[4] for entry in recent)
            mean = (sum(entry[3] for entry in recent) / scored) if scored else None
            # The spread of the scores lets a judge tell a real shift of the mean from sampling noise.
            std = math.sqrt(max(sum(entry[7] for entry in recent) / scored - mean * mean, 0.0)) if scored else None
            result[label] = {
                "requests": len(recent),
                "errors": errors,
                "error_rate": errors / len(recent),
                "latency_p50_ms": _percentile(latencies, 0.50),
                "latency_p90_ms": _percentile(latencies, 0.90),
                "latency_p99_ms": _percentile(latencies, 0.99),
                "mean_probability": mean,
                "probability_std": std,
                "scored": scored,
                "positive_rate": (sum(entry[5] for entry in recent) / scored) if scored else None,
                "version": recent[-1][6],
            }
        return result


def _percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[index]
