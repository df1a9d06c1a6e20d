"""How often the model and the people reviewing its cases agree, per model version and degree of automation.

The gateway logs each answer with its degree (`automation`) and decision; reviewers' answers come
back as feedback (`human_decision`), sometimes with the true label (`ground_truth`) later. This
module joins them and measures, per (model version, degree):

- agreement: the share of reviewed cases where the reviewer decided what the model did, overall
  and per slice (transforms.features.SLICE_FEATURES, hours in buckets as the evaluation names them);
- Cohen's kappa: that agreement corrected for what two raters with these base rates would reach
  by chance (a model that always says "not big tipper" agrees 80 % of the time with nobody);
- referral rate (partial): the share of answers that were `refer_to_human`, and the agreement inside
  the band (on the referred cases, with the model's class as its decision);
- override rate (assist): how often the reviewer changed the model's suggestion;
- who was right: on the cases where model and reviewer disagreed and the true label is known, how
  often each one had it.

The model's decision is what it answered (`big_tipper` / `not_big_tipper`); in shadow mode (answer
`none`) and for a referred case it is the model's class, which the log keeps. Reviews that are
not one of the two decisions are counted apart and never guessed. "Cannot tell" and cases nobody
answered before the timeout never reach the feedback log (monitoring/review_queue.py keeps them in
its ledger only): given the ledger, they are counted from it per version and degree (`cannot_tell`,
`unanswered`); without one they are zeros and `AgreementResult.ledger` is None, which says so.

Memory stays flat in the log size: the request log is read with a column projection for the
counts and with a filter on the reviewed request ids for the rest (pyarrow.dataset).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from monitoring.results import finite_or_none
from monitoring.served_values import window_batches
from transforms.features import (
    DECISION_BIG_TIPPER,
    DECISION_NOT_BIG_TIPPER,
    DECISION_REFER_TO_HUMAN,
    SLICE_FEATURES,
)

AGREEMENT = "agreement"
_TIMESTAMP = pa.timestamp("us", tz="UTC")
_INTS = {pa.int64(): pd.Int64Dtype(), pa.int32(): pd.Int32Dtype()}.get


@dataclasses.dataclass(frozen=True)
class SliceAgreement:
    """Agreement on the reviewed cases of one slice value (e.g. payment_type = Cash)."""

    feature: str
    value: str
    reviewed: int
    agreed: int

    @property
    def agreement(self) -> float:
        return self.agreed / self.reviewed

    def to_json(self) -> dict[str, Any]:
        return {"feature": self.feature, "value": self.value, "reviewed": self.reviewed, "agreed": self.agreed,
                "agreement": round(self.agreement, 6)}


@dataclasses.dataclass(frozen=True)
class Disagreements:
    """The cases where model and reviewer decided differently, and, where the truth is known, who had it."""

    cases: int
    with_ground_truth: int
    model_right: int
    human_right: int

    @property
    def right_more_often(self) -> str | None:
        """`model`, `human`, `tie`, or None when no disagreement has a true label yet."""
        if not self.with_ground_truth:
            return None
        if self.model_right == self.human_right:
            return "tie"
        return "model" if self.model_right > self.human_right else "human"

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "right_more_often": self.right_more_often}


@dataclasses.dataclass(frozen=True)
class GroupAgreement:
    """The evidence for one model version in one degree of automation."""

    model_version: int | None
    automation: str
    served: int  # examples answered in this degree (not shadow copies)
    referred: int  # of which `refer_to_human` (partial)
    reviewed: int  # with a reviewer's decision big_tipper / not_big_tipper
    undecided_reviews: int  # feedback whose human_decision was neither decision
    agreed: int
    kappa: float | None  # None when chance agreement is total (both always said the same class)
    band_reviewed: int  # referred cases reviewed (partial): the model's class vs the reviewer
    band_agreed: int
    disagreements: Disagreements
    slices: tuple[SliceAgreement, ...]
    # From the review ledger (zeros without one): cases the reviewer could not tell, and cases nobody answered.
    cannot_tell: int = 0
    unanswered: int = 0

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.reviewed if self.reviewed else None

    @property
    def referral_rate(self) -> float | None:
        """Share of the answers in partial that sent the case to a person (None in other degrees)."""
        return self.referred / self.served if self.automation == "partial" and self.served else None

    @property
    def override_rate(self) -> float | None:
        """In assist: how often the reviewer changed the model's suggestion (None in other degrees)."""
        return 1.0 - self.agreed / self.reviewed if self.automation == "assist" and self.reviewed else None

    @property
    def band_agreement(self) -> float | None:
        return self.band_agreed / self.band_reviewed if self.band_reviewed else None

    def worst_slice(self, min_cases: int) -> SliceAgreement | None:
        """The judged slice (>= min_cases reviews) with the lowest agreement."""
        judged = [s for s in self.slices if s.reviewed >= min_cases]
        return min(judged, key=lambda s: (s.agreement, -s.reviewed)) if judged else None

    def slice(self, feature: str, value: str) -> SliceAgreement:
        for found in self.slices:
            if found.feature == feature and found.value == value:
                return found
        raise KeyError(f"no reviewed cases in slice {feature}={value!r}")

    def to_json(self) -> dict[str, Any]:
        return {"model_version": self.model_version, "automation": self.automation, "served": self.served,
                "referred": self.referred, "reviewed": self.reviewed, "undecided_reviews": self.undecided_reviews,
                "cannot_tell": self.cannot_tell, "unanswered": self.unanswered,
                "agreed": self.agreed, "agreement": _rounded(self.agreement), "kappa": _rounded(self.kappa),
                "referral_rate": _rounded(self.referral_rate), "override_rate": _rounded(self.override_rate),
                "band_reviewed": self.band_reviewed, "band_agreement": _rounded(self.band_agreement),
                "disagreements": self.disagreements.to_json(), "slices": [s.to_json() for s in self.slices]}


@dataclasses.dataclass(frozen=True)
class AgreementResult:
    """Agreement of one model with its reviewers, on the requests served in [window_start, window_end)."""

    model_name: str
    window_start: dt.datetime
    window_end: dt.datetime
    groups: tuple[GroupAgreement, ...]
    ledger: str | None = None  # the review ledger counted for cannot_tell / unanswered; None: none was read

    def group(self, model_version: int | None, automation: str) -> GroupAgreement | None:
        return next((g for g in self.groups if g.model_version == model_version and g.automation == automation), None)

    @property
    def reviewed(self) -> int:
        return sum(g.reviewed for g in self.groups)

    def to_json(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "window_start": self.window_start.isoformat(),
                "window_end": self.window_end.isoformat(), "groups": [g.to_json() for g in self.groups],
                "ledger": self.ledger}

    def summary(self) -> dict[str, Any]:
        """Small, for ML Metadata properties: per version and degree the headline numbers."""
        return {f"{g.model_version}/{g.automation}": {"reviewed": g.reviewed, "agreement": _rounded(g.agreement, 4),
                                                     "kappa": _rounded(g.kappa, 4),
                                                     "referral_rate": _rounded(g.referral_rate, 4),
                                                     "override_rate": _rounded(g.override_rate, 4),
                                                     "cannot_tell": g.cannot_tell, "unanswered": g.unanswered}
                for g in self.groups}


def _rounded(value: float | None, digits: int = 6) -> float | None:
    value = finite_or_none(value)
    return None if value is None else round(float(value), digits)


def cohens_kappa(model_positive: np.ndarray, human_positive: np.ndarray) -> float | None:
    """Cohen's kappa of two binary raters; None when chance agreement is 1 (kappa undefined)."""
    n = len(model_positive)
    if n == 0:
        return None
    observed = float(np.mean(model_positive == human_positive))
    p_model, p_human = float(np.mean(model_positive)), float(np.mean(human_positive))
    chance = p_model * p_human + (1.0 - p_model) * (1.0 - p_human)
    if chance >= 1.0:
        return None
    return (observed - chance) / (1.0 - chance)


# --- from the logs ---------------------------------------------------------------------------


def read_agreement(log_dir: Path, model_name: str, start: dt.datetime, end: dt.datetime,
                   ledger_path: Path | None = None) -> AgreementResult:
    """Agreement of `model_name` with its reviewers on the examples served in [start, end), reviews received by `end`;
    with the review ledger at `ledger_path` (when it exists), its cannot-tell and unanswered cases counted too."""
    from monitoring.log_statistics import log_files
    from serving.prediction_log import join_feedback, read_feedback

    undecided = ledger_counts(Path(ledger_path), model_name, start, end) if ledger_path else None
    ledger = str(ledger_path) if undecided is not None else None
    files = [str(f) for f in log_files(Path(log_dir), start, end)]
    if not files:
        return AgreementResult(model_name, start, end, (), ledger)
    # Batch by batch, file by file (served_values.window_batches): memory stays that of one record
    # batch however many requests are counted (a dataset scanner's grew by ~250 MiB at 10M).
    counted = ["model_version", "automation", "decision"]
    batches = window_batches(Path(log_dir), start, end, ["timestamp", "model_name", "is_shadow", *counted], model_name)
    counts = sum_counts([served_counts(pa.Table.from_batches([batch]).select(counted)) for batch in batches])
    dataset = ds.dataset(files, format="parquet")
    served_filter = ((pc.field("model_name") == model_name) & ~pc.field("is_shadow")
                     & (pc.field("timestamp") >= pa.scalar(start, type=_TIMESTAMP))
                     & (pc.field("timestamp") < pa.scalar(end, type=_TIMESTAMP)))
    feedback = read_feedback(Path(log_dir), start, end)
    feedback = feedback[feedback["human_decision"].notna() | feedback["ground_truth"].notna()]
    reviewed_ids = feedback.loc[feedback["human_decision"].notna(), "request_id"].unique().tolist()
    columns = ["request_id", "instance_index", "timestamp", "model_version", "automation", "decision", "predicted_class",
               "is_shadow", *SLICE_FEATURES]
    if reviewed_ids:
        wanted = served_filter & pc.field("request_id").isin(pa.array(reviewed_ids, type=pa.string()))
        reviewed = join_feedback(dataset.to_table(columns=columns, filter=wanted).to_pandas(types_mapper=_INTS), feedback)
    else:
        reviewed = pd.DataFrame({c: [] for c in [*columns, "ground_truth", "human_decision"]})
    return dataclasses.replace(agreement_of(model_name, start, end, counts, reviewed, undecided), ledger=ledger)


def ledger_counts(ledger_path: Path, model_name: str, start: dt.datetime,
                  end: dt.datetime) -> dict[tuple[int, str], tuple[int, int]] | None:
    """(version, degree) -> (cannot_tell, unanswered) for the ledger's cases of requests served in [start, end);
    None when there is no ledger (no review ever ran). The version -1 stands for a missing one."""
    from monitoring.review_queue import CANNOT_TELL_STATE, UNANSWERED, CaseLedger

    ledger_path = Path(ledger_path)
    if not ledger_path.exists():
        return None
    counts: dict[tuple[int, str], tuple[int, int]] = {}
    for case in CaseLedger(ledger_path.parent).read().values():
        served_at = dt.datetime.fromisoformat(case.logged_at)
        served_at = served_at if served_at.tzinfo else served_at.replace(tzinfo=dt.timezone.utc)
        if case.model_name != model_name or not start <= served_at < end or case.state not in (CANNOT_TELL_STATE, UNANSWERED):
            continue
        key = (-1 if case.model_version is None else int(case.model_version), case.automation)
        cannot_tell, unanswered = counts.get(key, (0, 0))
        counts[key] = (cannot_tell + (case.state == CANNOT_TELL_STATE), unanswered + (case.state == UNANSWERED))
    return counts


def served_counts(table: pa.Table) -> pd.DataFrame:
    """Examples served and referred per (model_version, automation), from a three-column table."""
    # Categoricals keep the three columns small; pyarrow's own group_by crashes on chunked tables in this version.
    frame = table.to_pandas(strings_to_categorical=True, types_mapper=_INTS)
    frame["model_version"] = frame["model_version"].fillna(-1)
    frame["referred"] = (frame["decision"] == DECISION_REFER_TO_HUMAN).astype(np.int64)
    grouped = frame.groupby(["model_version", "automation"], observed=True)["referred"].agg(["size", "sum"]).reset_index()
    return pd.DataFrame({"model_version": grouped["model_version"].astype(np.int64).to_numpy(),
                         "automation": grouped["automation"].astype(str).to_numpy(),
                         "served": grouped["size"].astype(np.int64).to_numpy(),
                         "referred": grouped["sum"].astype(np.int64).to_numpy()})


def sum_counts(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """The per-batch counts of served_counts added up per (model_version, automation)."""
    if not parts:
        return pd.DataFrame({"model_version": pd.Series([], dtype=np.int64), "automation": pd.Series([], dtype=object),
                             "served": pd.Series([], dtype=np.int64), "referred": pd.Series([], dtype=np.int64)})
    return pd.concat(parts).groupby(["model_version", "automation"], as_index=False)[["served", "referred"]].sum()


def model_decisions(frame: pd.DataFrame) -> np.ndarray:
    """What the model decided for each row: its answer, or its class where it answered `none` (shadow) or referred."""
    decision = frame["decision"].astype(object).to_numpy()
    classes = pd.to_numeric(frame["predicted_class"], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    from_class = np.where(classes == 1, DECISION_BIG_TIPPER, np.where(classes == 0, DECISION_NOT_BIG_TIPPER, None))
    answered = np.isin(decision, (DECISION_BIG_TIPPER, DECISION_NOT_BIG_TIPPER))
    return np.where(answered, decision, from_class)


def agreement_of(model_name: str, start: dt.datetime, end: dt.datetime, counts: pd.DataFrame,
                 reviewed: pd.DataFrame, undecided: Mapping[tuple[int, str], tuple[int, int]] | None = None) -> AgreementResult:
    """The per-group measures from the served counts, the reviewed rows (requests joined with their feedback)
    and, from the review ledger, the cases per (version, degree) that ended cannot tell / unanswered."""
    from monitoring.sequential import slice_values

    reviewed = reviewed[reviewed["human_decision"].notna()].reset_index(drop=True)
    model = model_decisions(reviewed)
    human = reviewed["human_decision"].astype(object).to_numpy()
    decided = np.isin(human, (DECISION_BIG_TIPPER, DECISION_NOT_BIG_TIPPER)) & np.isin(
        model, (DECISION_BIG_TIPPER, DECISION_NOT_BIG_TIPPER))
    agree = decided & (model == human)
    # Nullable integers: a review before its label has no ground truth (NaN here, never a crash).
    truth = pd.to_numeric(reviewed["ground_truth"], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    slices = slice_values(reviewed)
    # -1 stands for a missing version so that the group keys compare as integers.
    versions = pd.to_numeric(reviewed["model_version"], errors="coerce").fillna(-1).to_numpy(dtype=np.int64)
    degrees = reviewed["automation"].astype(object).to_numpy()
    referred_rows = (reviewed["decision"] == DECISION_REFER_TO_HUMAN).to_numpy(dtype=bool)
    counted_versions = pd.to_numeric(counts["model_version"], errors="coerce").fillna(-1).to_numpy(dtype=np.int64)

    undecided = undecided or {}
    keys = (set(zip(counted_versions.tolist(), counts["automation"].astype(str)))
            | set(zip(versions.tolist(), degrees.astype(str))) | set(undecided))
    groups = []
    for version, degree in sorted(keys):
        in_counts = ((counts["automation"] == degree) & (counted_versions == version)).to_numpy(dtype=bool)
        in_group = (degrees == degree) & (versions == version)
        rows = in_group & decided
        model_positive = model[rows] == DECISION_BIG_TIPPER
        human_positive = human[rows] == DECISION_BIG_TIPPER
        disagree = rows & ~agree
        known = disagree & ~np.isnan(truth)
        truth_positive = truth == 1
        band = rows & referred_rows
        group_slices = tuple(
            SliceAgreement(feature, str(value), int(n), int(a))
            for feature, values in slices.items()
            for value, n, a in _slice_counts(values[rows], agree[rows]))
        groups.append(GroupAgreement(
            model_version=None if version < 0 else int(version), automation=degree,
            served=int(counts.loc[in_counts, "served"].sum()), referred=int(counts.loc[in_counts, "referred"].sum()),
            reviewed=int(rows.sum()), undecided_reviews=int((in_group & ~decided).sum()), agreed=int((rows & agree).sum()),
            kappa=cohens_kappa(model_positive, human_positive),
            band_reviewed=int(band.sum()), band_agreed=int((band & agree).sum()),
            disagreements=Disagreements(
                cases=int(disagree.sum()), with_ground_truth=int(known.sum()),
                model_right=int((known & ((model == DECISION_BIG_TIPPER) == truth_positive)).sum()),
                human_right=int((known & ((human == DECISION_BIG_TIPPER) == truth_positive)).sum())),
            slices=group_slices, cannot_tell=undecided.get((version, degree), (0, 0))[0],
            unanswered=undecided.get((version, degree), (0, 0))[1]))
    return AgreementResult(model_name, start, end, tuple(groups))


def _slice_counts(values: np.ndarray, agree: np.ndarray) -> list[tuple[str, int, int]]:
    if not len(values):
        return []
    table = pd.DataFrame({"value": values, "agree": agree}).groupby("value")["agree"].agg(["size", "sum"])
    return [(str(value), int(row["size"]), int(row["sum"])) for value, row in table.sort_index().iterrows()]
