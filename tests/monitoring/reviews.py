"""Traffic in one degree of automation reviewed by a scripted reviewer, logged as the gateway logs it.

The reviewer agrees with the model on one slice (payment type `Cash`) and disagrees on a chosen
share of the cases of another (`Credit Card`). The decisions are the gateway's own
(`serving.gateway.routing.decide`), the rows and the feedback go through `serving.prediction_log`.
Each case is returned too, so a test computes what it expects from the cases, not from the code
under test.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from pathlib import Path

import numpy as np

from serving import prediction_log as plog
from serving.gateway.routing import decide
from tests.monitoring.logs import _write_by_date
from transforms import features

AGREEING_SLICE = "Cash"
DISAGREEING_SLICE = "Credit Card"
BAND = (0.4, 0.6)


@dataclasses.dataclass(frozen=True)
class Case:
    request_id: str
    payment_type: str
    probability: float
    model_class: int
    decision: str  # what the gateway answered
    human_decision: str | None  # None: nobody reviewed it
    ground_truth: int | None


def scripted_traffic(log_dir: Path, *, start: dt.datetime, automation: str, model_version: int, agreeing: int,
                     disagreeing: int, disagree_every: int, unreviewed: int = 0, seed: int = 0,
                     model_name: str = "taxi") -> list[Case]:
    """Logs `agreeing` Cash cases the reviewer agrees on and `disagreeing` Credit Card cases where the
    reviewer decides the other class on every `disagree_every`-th one; `unreviewed` more cases get no review.

    Ground truth: on Cash the model (and reviewer) are right; on Credit Card the truth is the
    reviewer's decision, so on every disagreement the human was right.
    """
    rng = np.random.default_rng(seed)
    cases: list[Case] = []
    requests, feedback = [], []
    start_us = int(start.timestamp() * 1_000_000)
    total = agreeing + disagreeing + unreviewed
    for index in range(total):
        payment = AGREEING_SLICE if index < agreeing or index >= agreeing + disagreeing else DISAGREEING_SLICE
        probability = float(rng.uniform(0.02, 0.98))
        model_class = int(probability >= 0.5)
        decision = decide(automation, BAND, probability, model_class)
        reviewed = index < agreeing + disagreeing
        flip = payment == DISAGREEING_SLICE and (index - agreeing) % disagree_every == 0
        human_class = 1 - model_class if flip else model_class
        human = (features.DECISION_BIG_TIPPER if human_class else features.DECISION_NOT_BIG_TIPPER) if reviewed else None
        request_id = uuid.UUID(int=int(rng.integers(1 << 62)) << 64 | index).hex
        timestamp = start_us + index * 1000
        columns = {name: [None] for name in features.SERVING_COLUMNS}
        columns.update({features.PAYMENT_TYPE_KEY: [payment], features.HOUR_KEY: [10], features.DAY_KEY: [3],
                        features.COMPANY_KEY: ["Flash Cab"]})
        requests.append(plog.LoggedRequest(request_id, timestamp, model_name, model_version, "stable", "blue_green", automation,
                                      columns, [probability], [model_class], [decision], 5.0, 200, False))
        truth = human_class if reviewed else None
        if reviewed:
            feedback.append(plog.Feedback(request_id, 0, timestamp + 500, None, human, "review"))
            feedback.append(plog.Feedback(request_id, 0, timestamp + 700, truth, None, "label"))
        cases.append(Case(request_id, payment, probability, model_class, decision, human, truth))
    _write_by_date(Path(log_dir) / plog.REQUESTS_DIR, requests, plog.REQUEST_SCHEMA, plog.request_columns)
    _write_by_date(Path(log_dir) / plog.FEEDBACK_DIR, feedback, plog.FEEDBACK_SCHEMA, plog.feedback_columns)
    return cases
