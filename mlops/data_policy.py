"""Which data a (re)training run learns from, as DAG params over the config's `[data]` keys.

`mlops.toml`'s `[data]` section gives the defaults (production_data, production_logs_dir,
label_policy, production_window_days, max_production_share); the params of `taxi_training`, and
those `taxi_monitoring` passes to the retraining it triggers, may override each one for a run, and
`csv_days` makes the CSV window slide: the last N days before `end`; `production_since` keeps only
the requests from a day on (in taxi_monitoring, "served_model": from the day the served model's
training data ended, so the retraining learns from what came after it). Together they say e.g. "the
last 365 days of the CSV plus every labelled production request of the last 30 days, production
at most 40 % of the examples".

An empty param (None or "") keeps the config's value. A bad value is refused before anything runs
with a `DataError` naming the param and what it must be. The policy in force goes into ML Metadata
with the run: the ingest execution's parameters hold the production window, label policy, cap
and log directory (mlops/production_source.py), its window the CSV days, and a drift-triggered
run's `trigger` (its PipelineRun context) the policy as given (`RetrainingPolicy.to_json`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any, Mapping

from core.config import Config
from core.errors import DataError

LABEL_POLICIES = ("ground_truth", "ground_truth_or_human")
# The params, in the order the DAGs declare them (tests/dags/test_dag_copies.py ties the DAG copies).
POLICY_PARAMS = ("production_data", "production_logs", "label_policy", "production_window_days",
                 "max_production_share", "production_since", "csv_days")
# `production_since` may name this instead of a date: the day the served model's training data ended
# (resolved by the monitoring run that triggers the retraining, mlops.retraining.served_data_end).
SINCE_SERVED_MODEL = "served_model"


@dataclasses.dataclass(frozen=True)
class RetrainingPolicy:
    """The data policy of one run, resolved: the config's values with the params' overrides."""

    production_data: bool
    production_logs: str  # "" = none: no production data even when switched on
    label_policy: str
    production_window_days: int
    max_production_share: float
    production_since: str  # YYYY-MM-DD: only requests from that day on; "" = the whole window
    csv_days: int | None  # None = the window params start..end as given

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def csv_window(self, start: dt.date, end: dt.date) -> tuple[dt.date, dt.date]:
        """The CSV window: `start`..`end`, or the last `csv_days` days before `end` (a sliding window)."""
        return (end - dt.timedelta(days=self.csv_days), end) if self.csv_days else (start, end)

    def apply(self, config: Config) -> Config:
        """The config the steps read: its `[data]` production keys set to this policy."""
        return config.replace(data=dataclasses.replace(
            config.data, production_data=self.production_data, production_logs_dir=self.production_logs,
            label_policy=self.label_policy, production_window_days=self.production_window_days,
            max_production_share=self.max_production_share, production_since=self.production_since))


def _empty(value: Any) -> bool:
    return value is None or value == ""


def _integer(params: Mapping[str, Any], name: str, minimum: int) -> int | None:
    value = params.get(name)
    if _empty(value):
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DataError(f"the param {name} must be a whole number >= {minimum} (or empty for the config's), got {value!r}")
    return value


def retraining_policy(config: Config, params: Mapping[str, Any]) -> RetrainingPolicy:
    """The run's policy: the params that are set, else the config's `[data]` values; validated."""
    data = config.data
    production_data = params.get("production_data")
    if not _empty(production_data) and not isinstance(production_data, bool):
        raise DataError(f"the param production_data must be true or false (or empty for the config's), got {production_data!r}")
    logs = params.get("production_logs")
    if not _empty(logs) and not isinstance(logs, str):
        raise DataError(f"the param production_logs must be a directory path (or empty for the config's), got {logs!r}")
    label_policy = params.get("label_policy")
    if not _empty(label_policy) and label_policy not in LABEL_POLICIES:
        raise DataError(f"the param label_policy must be one of {', '.join(LABEL_POLICIES)} "
                        f"(or empty for the config's), got {label_policy!r}")
    share = params.get("max_production_share")
    if not _empty(share) and (isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share < 1):
        raise DataError(f"the param max_production_share must be a share in [0, 1) (or empty for the config's), got {share!r}")
    since = params.get("production_since")
    if not _empty(since):
        try:
            since = dt.date.fromisoformat(str(since)).isoformat()
        except ValueError:
            raise DataError(f"the param production_since must be a date YYYY-MM-DD (or {SINCE_SERVED_MODEL!r} in "
                            f"taxi_monitoring, or empty for the config's), got {since!r}") from None
    window_days = _integer(params, "production_window_days", 1)
    csv_days = _integer(params, "csv_days", 1)
    config_logs = data.production_logs_dir
    if config_logs and not Path(config_logs).is_absolute():
        config_logs = str((config.root / config_logs).resolve())
    return RetrainingPolicy(
        production_data=data.production_data if _empty(production_data) else production_data,
        production_logs=config_logs if _empty(logs) else str(Path(logs).resolve()),
        label_policy=data.label_policy if _empty(label_policy) else label_policy,
        production_window_days=data.production_window_days if window_days is None else window_days,
        max_production_share=data.max_production_share if _empty(share) else float(share),
        production_since=data.production_since if _empty(since) else since,
        csv_days=csv_days,
    )


def policy_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The policy params a monitoring run was given, to pass on to the training run it triggers."""
    return {name: params[name] for name in POLICY_PARAMS if not _empty(params.get(name))}
