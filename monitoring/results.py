"""What a monitoring run produces and compares with: check outcomes, the run's result, the baselines.

Types only (no checks, no I/O), so the checks (monitoring/checks.py), the run that drives them
(monitoring/monitor.py) and the report that draws them (monitoring/report.py) share them without
importing each other.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
from tensorflow_metadata.proto.v0 import statistics_pb2

from core.errors import DataError
from metadata.recorder import ArtifactRef

if TYPE_CHECKING:  # agreement.py and readiness.py import this module's helpers
    from monitoring.agreement import AgreementResult
    from monitoring.readiness import ReadinessVerdict

# The checks, by the names a result carries.
DATA_DRIFT = "data_drift"
SKEW = "training_serving_skew"
SCHEMA_ANOMALIES = "schema_anomalies"
MISSING_VALUES = "missing_values"
NULL_OUTPUTS = "null_outputs"
PREDICTION_DRIFT = "prediction_drift"
CONCEPT_DRIFT = "concept_drift"
PERFORMANCE_ESTIMATE = "performance_estimate"
CHECK_NAMES = (DATA_DRIFT, SKEW, SCHEMA_ANOMALIES, MISSING_VALUES, NULL_OUTPUTS, PREDICTION_DRIFT, CONCEPT_DRIFT,
               PERFORMANCE_ESTIMATE)

# A run's output folder: the JSON result, the HTML report and the window's statistics.
RESULT_FILE = "result.json"
REPORT_FILE = "report.html"
STATISTICS_FILE = Path("statistics") / "FeatureStats.pb"


@dataclasses.dataclass(frozen=True)
class CheckOutcome:
    name: str
    passed: bool
    value: float | None  # the worst score seen
    threshold: float | None
    evidence: dict  # which features moved and how far, counts, etc.
    # What the report draws (distributions per feature); not part of the JSON result.
    details: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "value": finite_or_none(self.value), "threshold": self.threshold,
                "evidence": as_strict_json(self.evidence)}

    def details_json(self) -> dict[str, Any]:
        """The details as strict JSON (per-feature tables and distributions), for result.json and tests."""
        return as_strict_json({key: value for key, value in self.details.items() if key != "scores"})


@dataclasses.dataclass(frozen=True)
class MonitoringResult:
    checks: list[CheckOutcome]
    window_start: dt.datetime
    window_end: dt.datetime
    model_name: str
    model_version: int | None
    rows: int
    report_html: Path | None
    artifact: ArtifactRef | None  # the DriftCheckResult artifact recorded in MLMD
    # Model vs reviewers (not a pass/fail check: a fall under the floor moves the model down a degree,
    # which the automation DAG does; retraining is not the answer to it).
    agreement: "AgreementResult | None" = None
    readiness: "ReadinessVerdict | None" = None

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def failed(self) -> list[CheckOutcome]:
        return [check for check in self.checks if not check.passed]

    def check(self, name: str) -> CheckOutcome:
        for outcome in self.checks:
            if outcome.name == name:
                return outcome
        raise KeyError(f"no check {name!r} in this result; checks: {[c.name for c in self.checks]}")

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "failed_checks": [check.name for check in self.failed],
            "checks": [check.to_json() for check in self.checks],
            "window_start": self.window_start.isoformat(),
            "window_end": self.window_end.isoformat(),
            "model_name": self.model_name,
            "model_version": self.model_version,
            "rows": self.rows,
            "report_html": str(self.report_html) if self.report_html else None,
            "artifact": self.artifact.to_json() if self.artifact else None,
            "agreement": self.agreement.to_json() if self.agreement else None,
            "readiness": self.readiness.to_json() if self.readiness else None,
        }


def finite_or_none(value: Any) -> Any:
    """None for NaN and infinities, Python numbers for numpy scalars."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (np.floating, np.integer)):
        return finite_or_none(value.item())
    return value


def as_strict_json(value: Any) -> Any:
    """Strict-JSON types: NaN/inf become None, numpy scalars Python numbers."""
    if isinstance(value, Mapping):
        return {str(k): as_strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_strict_json(v) for v in value]
    return finite_or_none(value)


def skipped_outcome(name: str, why: str, **evidence: Any) -> CheckOutcome:
    """A check that could not judge this window (too few rows or labels): it passes and says why."""
    return CheckOutcome(name, True, None, None, {"judged": False, "skipped": why, **evidence})


# --- baselines: what the window is compared with ------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Baseline:
    """Data to compare the window with: its TFDV statistics and, when available, the raw rows or their counts."""

    label: str  # e.g. "training data (taxi:3)" or "previous window"
    statistics: statistics_pb2.DatasetFeatureStatisticsList
    frame: Any = None  # a pandas DataFrame of the rows, or their ServedValues (monitoring/served_values.py)


@dataclasses.dataclass(frozen=True)
class PredictionBaseline:
    """The model's predicted probabilities on its evaluation data, as counts on fixed bins of [0, 1]."""

    edges: tuple[float, ...]
    counts: tuple[float, ...]
    source: str  # where the numbers come from (evaluation.json, or a cached scoring)

    def __post_init__(self) -> None:
        if len(self.edges) != len(self.counts) + 1 or len(self.counts) < 2:
            raise DataError(f"prediction baseline from {self.source}: {len(self.edges)} edges for {len(self.counts)} bins")


@dataclasses.dataclass(frozen=True)
class CalibrationMap:
    """How often a request the model scored p turned out positive at evaluation: P(label | p).

    Built from the evaluation's score histogram (positives and negatives per probability bin),
    pooled until it rises with p (pool-adjacent-violators) and read between bin centres. It is what
    the concept-drift detector expects a label to be, and what the label-free performance estimate
    counts as the chance of each prediction being right.
    """

    centres: tuple[float, ...]
    rates: tuple[float, ...]
    counts: tuple[float, ...]
    source: str

    @classmethod
    def from_histogram(cls, edges: Sequence[float], positives: Sequence[float], negatives: Sequence[float],
                       source: str) -> "CalibrationMap":
        edges_ = np.asarray(edges, dtype=np.float64)
        pos, neg = np.asarray(positives, dtype=np.float64), np.asarray(negatives, dtype=np.float64)
        if len(edges_) != len(pos) + 1 or len(pos) != len(neg) or len(pos) < 2:
            raise DataError(f"calibration from {source}: {len(edges_)} edges for {len(pos)} positive and {len(neg)} negative bins")
        counts = pos + neg
        used = counts > 0
        if used.sum() < 2:
            raise DataError(f"calibration from {source}: fewer than two probability bins hold evaluation rows")
        # Half a row each way keeps a bin of 3,000 negatives from claiming positives are impossible.
        blocks = [[float(p + 0.5), float(n + 1.0), [float(c)]]
                  for p, n, c in zip(pos[used], counts[used], ((edges_[:-1] + edges_[1:]) / 2)[used])]
        pooled: list[list] = []
        for block in blocks:
            pooled.append(block)
            while len(pooled) > 1 and pooled[-2][0] / pooled[-2][1] > pooled[-1][0] / pooled[-1][1]:
                last = pooled.pop()
                pooled[-1] = [pooled[-1][0] + last[0], pooled[-1][1] + last[1], pooled[-1][2] + last[2]]
        centres = [c for block in pooled for c in block[2]]
        rates = [block[0] / block[1] for block in pooled for _ in block[2]]
        return cls(tuple(centres), tuple(rates), tuple(counts[used].tolist()), source)

    def rate(self, probabilities: np.ndarray) -> np.ndarray:
        return np.interp(np.asarray(probabilities, dtype=np.float64), self.centres, self.rates)

    def plausible_rates(self, probabilities: np.ndarray, draws: int, rng: np.random.Generator) -> np.ndarray:
        """`rate(probabilities)` under rate tables the evaluation's counts allow, one row per draw.

        Each pooled bin's rate is drawn from its Beta posterior: an evaluation of 200 rows in a bin
        knows its rate to about 0.03, and an interval that ignored that would claim too much.
        """
        return self.rates_under(self.plausible_tables(draws, rng), *self.interpolation(probabilities))

    def plausible_tables(self, draws: int, rng: np.random.Generator) -> np.ndarray:
        """Rate tables (one row per draw, one column per centre) drawn from each pooled bin's Beta posterior."""
        rates, counts = np.asarray(self.rates), np.asarray(self.counts)
        new_block = np.r_[True, rates[1:] != rates[:-1]]
        block = np.cumsum(new_block) - 1
        totals = np.bincount(block, weights=counts)
        return rng.beta(rates[new_block] * totals + 0.5, (1.0 - rates[new_block]) * totals + 0.5,
                        size=(draws, totals.size))[:, block]

    def interpolation(self, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(left centre index, weight of the right one) of each probability: computed once for many tables."""
        centres = np.asarray(self.centres)
        p = np.asarray(probabilities, dtype=np.float64)
        left = np.clip(np.searchsorted(centres, p) - 1, 0, centres.size - 2)
        weight = np.clip((p - centres[left]) / (centres[left + 1] - centres[left]), 0.0, 1.0)
        return left, weight

    @staticmethod
    def rates_under(tables: np.ndarray, left: np.ndarray, weight: np.ndarray) -> np.ndarray:
        return tables[:, left] * (1.0 - weight) + tables[:, left + 1] * weight


@dataclasses.dataclass(frozen=True)
class ConceptBaseline:
    """The model's evaluation metrics the labelled traffic is held against."""

    auc: float
    accuracy: float
    ece: float
    source: str
    # None when the evaluation kept no score histogram: the sequential detectors and the
    # label-free estimate then have nothing to expect and do not judge.
    calibration: CalibrationMap | None = None
