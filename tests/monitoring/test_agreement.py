"""Agreement between the model and a scripted reviewer, per degree and slice, from real log files."""

from __future__ import annotations

import datetime as dt

import pytest

from monitoring.agreement import cohens_kappa, read_agreement
from tests.monitoring.reviews import AGREEING_SLICE, DISAGREEING_SLICE, scripted_traffic
from transforms import features

START = dt.datetime(2026, 3, 2, 8, tzinfo=dt.timezone.utc)
END = START + dt.timedelta(days=1)


def expected_kappa(cases) -> float:
    """Cohen's kappa from the 2x2 table of the cases, written out."""
    pairs = [(c.model_class, c.human_decision == features.DECISION_BIG_TIPPER) for c in cases if c.human_decision]
    n = len(pairs)
    both_yes = sum(1 for m, h in pairs if m and h)
    both_no = sum(1 for m, h in pairs if not m and not h)
    observed = (both_yes + both_no) / n
    model_yes = sum(1 for m, _ in pairs if m) / n
    human_yes = sum(1 for _, h in pairs if h) / n
    chance = model_yes * human_yes + (1 - model_yes) * (1 - human_yes)
    return (observed - chance) / (1 - chance)


def test_partial_traffic_agreement_per_slice_kappa_referral_and_who_was_right(tmp_path):
    cases = scripted_traffic(tmp_path, start=START, automation="partial", model_version=3, agreeing=200,
                             disagreeing=200, disagree_every=4, unreviewed=100)
    result = read_agreement(tmp_path, "taxi", START, END)
    group = result.group(3, "partial")
    assert group is not None and [g.automation for g in result.groups] == ["partial"]

    reviewed = [c for c in cases if c.human_decision]
    disagreements = [c for c in reviewed if (c.human_decision == features.DECISION_BIG_TIPPER) != bool(c.model_class)]
    assert len(disagreements) == 50  # every 4th of the 200 Credit Card cases
    assert group.served == 500 and group.reviewed == 400
    assert group.agreed == 350 and group.agreement == pytest.approx(350 / 400)
    assert group.slice(features.PAYMENT_TYPE_KEY, AGREEING_SLICE).agreement == 1.0
    assert group.slice(features.PAYMENT_TYPE_KEY, DISAGREEING_SLICE).agreement == pytest.approx(150 / 200)
    assert group.slice(features.PAYMENT_TYPE_KEY, DISAGREEING_SLICE).reviewed == 200
    # The other slice features hold one value each: all 400 cases, the overall agreement.
    assert group.slice("hour_bucket", "morning").agreement == pytest.approx(350 / 400)
    assert group.kappa == pytest.approx(expected_kappa(cases))
    referred = sum(1 for c in cases if c.decision == features.DECISION_REFER_TO_HUMAN)
    assert 0 < referred < 500 and group.referred == referred
    assert group.referral_rate == pytest.approx(referred / 500)
    band = [c for c in reviewed if c.decision == features.DECISION_REFER_TO_HUMAN]
    band_agreed = [c for c in band if c not in disagreements]
    assert group.band_reviewed == len(band) and group.band_agreement == pytest.approx(len(band_agreed) / len(band))
    assert group.override_rate is None  # only in assist
    # The truth is the reviewer's decision on Credit Card: the human was right on every disagreement.
    assert (group.disagreements.cases, group.disagreements.with_ground_truth) == (50, 50)
    assert (group.disagreements.model_right, group.disagreements.human_right) == (0, 50)
    assert group.disagreements.right_more_often == "human"


def test_shadow_uses_the_models_class_and_assist_counts_overrides(tmp_path):
    shadow = scripted_traffic(tmp_path, start=START, automation="shadow", model_version=1, agreeing=40, disagreeing=40,
                              disagree_every=2, seed=1)
    scripted_traffic(tmp_path, start=START + dt.timedelta(hours=1), automation="assist", model_version=2, agreeing=30,
                     disagreeing=10, disagree_every=5, seed=2)
    assert {c.decision for c in shadow} == {features.DECISION_NONE}
    result = read_agreement(tmp_path, "taxi", START, END)
    in_shadow, in_assist = result.group(1, "shadow"), result.group(2, "assist")
    assert (in_shadow.reviewed, in_shadow.agreed) == (80, 60)
    assert in_shadow.kappa == pytest.approx(expected_kappa(shadow))
    assert in_shadow.referral_rate is None and in_shadow.override_rate is None
    assert (in_assist.reviewed, in_assist.agreed) == (40, 38)
    assert in_assist.override_rate == pytest.approx(2 / 40)
    assert result.group(1, "assist") is None


def test_cannot_tell_is_counted_apart_and_an_empty_log_has_no_groups(tmp_path):
    import pyarrow as pa

    from serving.prediction_log import FEEDBACK_DIR, FEEDBACK_SCHEMA, Feedback, feedback_columns, write_table_atomically

    assert read_agreement(tmp_path, "taxi", START, END).groups == ()
    cases = scripted_traffic(tmp_path, start=START, automation="assist", model_version=1, agreeing=10, disagreeing=0,
                             disagree_every=1, seed=3)
    later = int((START + dt.timedelta(hours=2)).timestamp() * 1e6)
    entries = [Feedback(cases[0].request_id, 0, later, None, "cannot_tell", "review")]
    write_table_atomically(pa.Table.from_pydict(feedback_columns(entries), schema=FEEDBACK_SCHEMA),
                           tmp_path / FEEDBACK_DIR / f"date={START:%Y-%m-%d}")
    group = read_agreement(tmp_path, "taxi", START, END).group(1, "assist")
    assert (group.reviewed, group.undecided_reviews, group.agreed) == (9, 1, 9)
    assert read_agreement(tmp_path, "other-model", START, END).groups == ()


def test_kappa_is_zero_for_chance_agreement_and_undefined_without_variation():
    import numpy as np

    model = np.array([1, 1, 0, 0], dtype=bool)
    assert cohens_kappa(model, np.array([1, 0, 1, 0], dtype=bool)) == pytest.approx(0.0)
    assert cohens_kappa(model, model) == pytest.approx(1.0)
    assert cohens_kappa(np.ones(3, bool), np.ones(3, bool)) is None
