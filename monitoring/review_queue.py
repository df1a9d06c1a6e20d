"""The review queue: which served predictions a person looks at, and what became of each case.

A case is one served example (`request_id`, `instance_index`) of the gateway's request log that
needs a person (docs/ARCHITECTURE.md, "Review queue"):

* `referred`: every `refer_to_human` answer (the model was unsure in `partial`, or gave no number);
* `sample`: a share of the answers given in `shadow` and `assist` (the model's work is measured
  against the people it shadows or helps);
* `audit`: a share of the confident answers given in `full`.

Sampling hashes the request id and instance, so a re-run picks the same requests. Requests that
already carry a human decision (feedback) and requests already in the ledger are never picked
again; at most `max_open_cases` new cases per run, oldest first.

The ledger (`<pipeline_root>/review/cases.json`, written atomically under a lock) keeps every
case with its state: `open` (waiting for a person), `answered` (the decision was written back to
the gateway as feedback, source `review:<user>`, so monitoring sees it like a late label),
`cannot_tell` (the reviewer could not decide: recorded here, never sent as a decision) or
`unanswered` (nobody answered before the timeout: closed, never guessed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import fcntl
import hashlib
import json
import math
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from core import atomic
from core.config import ReviewConfig
from core.errors import DataError, MlopsError
from metadata.review import LEDGER_NAME, REVIEW_DIR
from serving.prediction_log import join_feedback, read_feedback, read_prediction_logs
from transforms.features import DECISION_REFER_TO_HUMAN, HUMAN_DECISIONS, SERVING_COLUMNS

# What a reviewer may answer: a decision, or that they cannot tell.
CANNOT_TELL = "cannot tell"
REVIEW_OPTIONS = (*HUMAN_DECISIONS, CANNOT_TELL)

OPEN, ANSWERED, CANNOT_TELL_STATE, UNANSWERED = "open", "answered", "cannot_tell", "unanswered"
CASE_STATES = (OPEN, ANSWERED, CANNOT_TELL_STATE, UNANSWERED)
REFERRED, SAMPLE, AUDIT = "referred", "sample", "audit"

# The gateway's limit on a feedback source (serving/gateway/core.py).
_MAX_SOURCE = 64


class ReviewError(MlopsError):
    """The ledger is unreadable, or the gateway refused the written-back answers."""


class FeedbackNotDelivered(ReviewError):
    """The gateway could not be reached: the answers stay in the ledger and a retry sends them."""


@dataclasses.dataclass(frozen=True)
class ReviewCase:
    """One served example waiting for (or reviewed by) a person."""

    request_id: str
    instance_index: int
    logged_at: str  # when the request arrived (ISO, UTC)
    model_name: str
    model_version: int | None
    automation: str
    decision: str
    probability: float | None
    features: Mapping[str, Any]
    reason: str  # referred | sample | audit
    run_id: str  # the review run that opened the case
    opened_at: str
    state: str = OPEN
    answer: str | None = None  # the option chosen (a human decision or "cannot tell")
    answered_by: str | None = None
    answered_at: str | None = None
    closed_at: str | None = None
    written_back: bool = False  # the decision reached the gateway's feedback log

    @property
    def key(self) -> str:
        return case_key(self.request_id, self.instance_index)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"features": dict(self.features)}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> "ReviewCase":
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{name: value[name] for name in names if name in value})


def case_key(request_id: str, instance_index: int) -> str:
    return f"{request_id}#{int(instance_index)}"


def sample_position(request_id: str, instance_index: int) -> float:
    """A number in [0, 1) fixed by the request id and instance: a request is in a sample of rate r when it is < r."""
    digest = hashlib.sha256(case_key(request_id, instance_index).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def selection_reason(automation: str, decision: str, request_id: str, instance_index: int, settings: ReviewConfig) -> str | None:
    """Why this served example needs a person (referred, sample, audit), or None."""
    if decision == DECISION_REFER_TO_HUMAN:
        return REFERRED
    rate = {"shadow": settings.sample_rate_shadow, "assist": settings.sample_rate_assist}.get(automation)
    reason = SAMPLE
    if rate is None and automation == "full" and decision in HUMAN_DECISIONS:
        rate, reason = settings.audit_rate_full, AUDIT
    if rate and sample_position(request_id, instance_index) < rate:
        return reason
    return None


# --- the ledger ------------------------------------------------------------------------------


def ledger_dir(pipeline_root: Path) -> Path:
    return Path(pipeline_root) / REVIEW_DIR


class CaseLedger:
    """Every case ever opened, keyed by request id and instance; one JSON file, replaced atomically.

    Changes happen inside `editing()`, which holds an exclusive lock for the read-modify-write, so
    two review runs at once cannot lose each other's cases.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LEDGER_NAME

    def read(self) -> dict[str, ReviewCase]:
        if not self.path.exists():
            return {}
        try:
            document = json.loads(self.path.read_text(encoding="utf-8"))
            return {key: ReviewCase.from_json(value) for key, value in document["cases"].items()}
        except (ValueError, KeyError, TypeError) as err:
            raise ReviewError(f"{self.path}: not a review ledger ({err}); move it away to start a new one") from None

    @contextlib.contextmanager
    def editing(self) -> Iterator[dict[str, ReviewCase]]:
        """The cases, to change in place; written back atomically when the block ends without error."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / ".cases.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                cases = self.read()
                yield cases
                atomic.write_json(self.path, {"cases": {key: case.to_json() for key, case in sorted(cases.items())}})
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def of_run(self, run_id: str) -> list[ReviewCase]:
        return sorted((case for case in self.read().values() if case.run_id == run_id), key=lambda c: (c.logged_at, c.key))


# --- selection -------------------------------------------------------------------------------


def select_cases(log_dir: Path, start: dt.datetime, end: dt.datetime, known: Mapping[str, ReviewCase],
                 settings: ReviewConfig, *, run_id: str, now: dt.datetime, model_name: str | None = None,
                 max_cases: int | None = None) -> list[ReviewCase]:
    """The new cases among the requests logged in [start, end): those needing a person that have no
    human decision yet and are not in `known`, oldest first, at most `max_cases` (default: the config's)."""
    requests = read_prediction_logs(log_dir, start, end, model_name=model_name, include_shadow=False)
    if requests.empty:
        return []
    served = join_feedback(requests, read_feedback(log_dir, start))
    limit = settings.max_open_cases if max_cases is None else max_cases
    opened_at = now.astimezone(dt.timezone.utc).isoformat()
    cases: list[ReviewCase] = []
    for row in served.sort_values(["timestamp", "request_id", "instance_index"], kind="stable").itertuples(index=False):
        if len(cases) >= limit:
            break
        request_id, index = str(row.request_id), int(row.instance_index)
        if _plain(row.human_decision) is not None or case_key(request_id, index) in known:
            continue
        reason = selection_reason(str(row.automation), str(row.decision), request_id, index, settings)
        if reason is None:
            continue
        values = row._asdict()
        cases.append(ReviewCase(
            request_id=request_id, instance_index=index, logged_at=row.timestamp.isoformat(),
            model_name=str(row.model_name), model_version=_int_or_none(row.model_version),
            automation=str(row.automation), decision=str(row.decision), probability=_float_or_none(row.probability),
            features={name: _plain(values[name]) for name in SERVING_COLUMNS}, reason=reason,
            run_id=run_id, opened_at=opened_at))
    return cases


def open_cases(ledger: CaseLedger, log_dir: Path, start: dt.datetime, end: dt.datetime, settings: ReviewConfig, *,
               run_id: str, now: dt.datetime | None = None, model_name: str | None = None,
               max_cases: int | None = None) -> list[ReviewCase]:
    """Opens this run's cases in the ledger and returns them. A run that already opened its cases
    (a retried task, a re-run) gets the same ones back: never a second case for a request."""
    now = now or dt.datetime.now(dt.timezone.utc)
    with ledger.editing() as cases:
        mine = [case for case in cases.values() if case.run_id == run_id]
        if not mine:
            mine = select_cases(log_dir, start, end, cases, settings, run_id=run_id, now=now,
                                model_name=model_name, max_cases=max_cases)
            cases.update({case.key: case for case in mine})
    return sorted(mine, key=lambda c: (c.logged_at, c.key))


# --- what a reviewer sees --------------------------------------------------------------------

_WHY = {
    REFERRED: "the model was unsure, so the gateway referred the trip to a person",
    SAMPLE: "a sample of the answers given in this degree, to measure the model against people",
    AUDIT: "an audit sample of the model's confident answers",
}


def case_subject(case: ReviewCase) -> str:
    return f"Big tipper? Trip {case.request_id} #{case.instance_index} ({case.automation}, {case.reason})"


def case_body(case: ReviewCase) -> str:
    """The required action's text (Markdown): the trip, the model's answer, and why it is asked."""
    probability = "none (the model gave no number)" if case.probability is None else f"{case.probability:.3f}"
    lines = [
        f"**Would this passenger tip more than 20 % of the fare?** Answer `{HUMAN_DECISIONS[0]}`, "
        f"`{HUMAN_DECISIONS[1]}`, or `{CANNOT_TELL}` when the trip does not tell.",
        "",
        f"- Model: `{case.model_name}` version {case.model_version}",
        f"- Model's probability of a big tipper: **{probability}**",
        f"- Gateway's decision: `{case.decision}` (degree of automation `{case.automation}`)",
        f"- Why you see it: {_WHY.get(case.reason, case.reason)}",
        f"- Request `{case.request_id}`, instance {case.instance_index}, served {case.logged_at}",
        "",
        "| feature | value |",
        "|---|---|",
        *(f"| {name} | {'(missing)' if value is None else value} |" for name, value in case.features.items()),
    ]
    return "\n".join(lines)


# --- answers ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ReviewAnswer:
    """What a person chose for one case (from the required action's response)."""

    request_id: str
    instance_index: int
    chosen: str
    user: str
    responded_at: str


@dataclasses.dataclass(frozen=True)
class ReviewSummary:
    run_id: str
    answered: int
    cannot_tell: int
    unanswered: int
    agree: int  # answered cases where the person chose what the model would have
    disagree: int
    written_back: int

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def line(self) -> str:
        return (f"review {self.run_id}: {self.answered} answered ({self.agree} agree with the model, "
                f"{self.disagree} disagree), {self.cannot_tell} cannot tell, {self.unanswered} unanswered; "
                f"{self.written_back} decisions written back as feedback")


def feedback_source(user: str) -> str:
    return f"review:{user}"[:_MAX_SOURCE]


def model_answer(case: ReviewCase, threshold: float = 0.5) -> str | None:
    """What the model would have decided: its decision, or its probability against `threshold` when it
    did not decide alone (referred, shadow); None without a number."""
    if case.decision in HUMAN_DECISIONS:
        return case.decision
    if case.probability is None:
        return None
    return HUMAN_DECISIONS[0] if case.probability >= threshold else HUMAN_DECISIONS[1]


def close_cases(ledger: CaseLedger, run_id: str, answers: Sequence[ReviewAnswer], gateway_url: str, *,
                now: dt.datetime | None = None, threshold: float = 0.5, timeout: float = 30.0,
                close_unanswered: bool = True) -> ReviewSummary:
    """Closes the run's open cases: each answered decision is written back to the gateway as feedback
    (`human_decision`, source `review:<user>`) and the case becomes `answered`; "cannot tell" is kept
    in the ledger only; a case without an answer becomes `unanswered` (stays open with
    `close_unanswered=False`: one case answered while the others still wait). Idempotent: a decision
    already written back is not sent again, and a failed write-back is retried by the next call."""
    closed_at = (now or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc).isoformat()
    by_key = {case_key(a.request_id, a.instance_index): a for a in answers}
    with ledger.editing() as cases:
        mine = [case for case in cases.values() if case.run_id == run_id]
        unknown = sorted(set(by_key) - {case.key for case in mine})
        if unknown:
            raise ReviewError(f"answers for cases run {run_id} did not open: {unknown[:5]}")
        for case in mine:
            if case.state != OPEN:
                continue
            answer = by_key.get(case.key)
            if answer is None:
                if close_unanswered:
                    cases[case.key] = dataclasses.replace(case, state=UNANSWERED, closed_at=closed_at)
                continue
            if answer.chosen not in REVIEW_OPTIONS:
                raise DataError(f"case {case.key}: the answer {answer.chosen!r} is not one of {list(REVIEW_OPTIONS)}")
            state = CANNOT_TELL_STATE if answer.chosen == CANNOT_TELL else ANSWERED
            cases[case.key] = dataclasses.replace(case, state=state, answer=answer.chosen, answered_by=answer.user,
                                                  answered_at=answer.responded_at, closed_at=closed_at)
    # Chosen, sent and marked under one lock: one run's write-backs run at once (a mapped task per
    # case), and each would otherwise send the decisions the others were sending too. A failed POST
    # leaves the ledger as it was (the block ends in an error), so the next call sends them.
    with ledger.editing() as cases:
        pending = sorted((case for case in cases.values()
                          if case.run_id == run_id and case.state == ANSWERED and not case.written_back),
                         key=lambda c: c.key)
        if pending:
            post_feedback(gateway_url, [{"request_id": case.request_id, "instance_index": case.instance_index,
                                         "human_decision": case.answer, "source": feedback_source(case.answered_by or "unknown")}
                                        for case in pending], timeout=timeout)
            for case in pending:
                cases[case.key] = dataclasses.replace(case, written_back=True)
    return summarize(run_id, ledger.of_run(run_id), threshold)


def summarize(run_id: str, cases: Sequence[ReviewCase], threshold: float = 0.5) -> ReviewSummary:
    answered = [case for case in cases if case.state == ANSWERED]
    agree = sum(case.answer == model_answer(case, threshold) for case in answered)
    return ReviewSummary(
        run_id=run_id, answered=len(answered), cannot_tell=sum(case.state == CANNOT_TELL_STATE for case in cases),
        unanswered=sum(case.state == UNANSWERED for case in cases), agree=agree,
        disagree=sum(model_answer(case, threshold) is not None for case in answered) - agree,
        written_back=sum(case.written_back for case in answered))


def run_cases_file(ledger: CaseLedger, run_id: str) -> Path:
    """Where a run's cases are kept as they were closed (the ledger itself keeps changing)."""
    return ledger.directory / "runs" / f"{run_id}.json"


def write_run_cases(ledger: CaseLedger, run_id: str, threshold: float = 0.5) -> tuple[Path, list[dict[str, Any]]]:
    """Writes the run's cases, each with what the model would have decided (`model_answer`), to
    `run_cases_file`, atomically; returns the file and the cases (recorded in ML Metadata as a ReviewRun)."""
    cases = [case.to_json() | {"model_answer": model_answer(case, threshold)} for case in ledger.of_run(run_id)]
    path = run_cases_file(ledger, run_id)
    atomic.write_json(path, {"run_id": run_id, "ledger": str(ledger.path),
                             "cases": {f"{c['request_id']}#{c['instance_index']}": c for c in cases}})
    return path, cases


def format_cases(cases: Sequence[ReviewCase], ledger_path: Path) -> str:
    """A table of cases for a terminal: counts per state, then one line per case."""
    counts = ", ".join(f"{sum(c.state == state for c in cases)} {state}" for state in CASE_STATES)
    lines = [f"{len(cases)} review cases ({counts}) in {ledger_path}"]
    for case in cases:
        probability = "-" if case.probability is None else f"{case.probability:.3f}"
        who = f"{case.answer} by {case.answered_by}" if case.answer else ""
        lines.append(f"  {case.key:<36} {case.automation:<8} {case.reason:<9} p={probability:<6} "
                     f"v{case.model_version} {case.state:<11} {who}".rstrip())
    return "\n".join(lines)


def post_feedback(gateway_url: str, items: Sequence[Mapping[str, Any]], *, timeout: float = 30.0) -> dict[str, Any]:
    """POSTs the items to the gateway's `/v1/feedback` in one request; raises ReviewError when refused."""
    url = gateway_url.rstrip("/") + "/v1/feedback"
    request = urllib.request.Request(url, data=json.dumps(list(items)).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as err:
        raise ReviewError(f"the gateway at {url} refused the reviewers' answers: HTTP {err.code} "
                          f"{err.read().decode(errors='replace')[:300]}") from None
    except (urllib.error.URLError, OSError) as err:
        raise FeedbackNotDelivered(f"cannot reach the gateway at {url} to write back the reviewers' answers ({err}); "
                          "the answers stay in the ledger and are sent by the next run of this close") from None


# --- plain values from a pandas row ----------------------------------------------------------


def _plain(value: Any) -> Any:
    """JSON-ready: None for missing (NaN, pandas NA), Python ints/floats/strings otherwise."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    try:
        import pandas as pd

        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    if hasattr(value, "item"):
        value = value.item()
    return value


def _int_or_none(value: Any) -> int | None:
    value = _plain(value)
    return None if value is None else int(value)


def _float_or_none(value: Any) -> float | None:
    value = _plain(value)
    return None if value is None or not math.isfinite(float(value)) else float(value)
