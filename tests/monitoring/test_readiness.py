"""Readiness verdicts from a scripted reviewer's agreement: up when earned, down when it fell, never up on a weak slice."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from core.config import AutomationConfig, ConfigError, config_from_dict
from core.errors import DataError
from monitoring.agreement import read_agreement
from monitoring.readiness import assess_readiness
from tests.monitoring.reviews import DISAGREEING_SLICE, scripted_traffic

START = dt.datetime(2026, 3, 2, 8, tzinfo=dt.timezone.utc)
END = START + dt.timedelta(days=1)
RULES = AutomationConfig()


def rules_by_name(verdict):
    return {rule.name: rule for rule in verdict.rules}


def test_shadow_to_assist_needs_every_slice_above_its_floor(tmp_path):
    # Cash: 300 of 300 agreed; Credit Card: every 4th of 300 flipped -> 225/300 = 75 %; overall 525/600 = 87.5 %.
    scripted_traffic(tmp_path, start=START, automation="shadow", model_version=4, agreeing=300, disagreeing=300,
                     disagree_every=4)
    verdict = assess_readiness(read_agreement(tmp_path, "taxi", START, END), 4, "shadow", RULES)
    rules = rules_by_name(verdict)
    assert (verdict.current, verdict.next, verdict.meets, verdict.action) == ("shadow", "assist", False, "stay")
    assert rules["min_reviewed"].observed == 600 and rules["min_reviewed"].met
    assert rules["min_agreement"].observed == pytest.approx(525 / 600) and not rules["min_agreement"].met
    worst = rules["min_slice_agreement"]
    assert worst.observed == pytest.approx(225 / 300) and not worst.met and DISAGREEING_SLICE in worst.detail
    assert verdict.floor is None and not verdict.move_down  # nothing is below shadow
    assert "NOT MET" in verdict.describe()


def test_shadow_to_assist_is_met_when_the_weak_slice_clears_its_floor(tmp_path):
    # Credit Card: every 8th of 300 flipped (38) -> 262/300 = 87.3 % >= 80 %; overall 562/600 = 93.7 % >= 90 %.
    scripted_traffic(tmp_path, start=START, automation="shadow", model_version=4, agreeing=300, disagreeing=300,
                     disagree_every=8)
    verdict = assess_readiness(read_agreement(tmp_path, "taxi", START, END), 4, "shadow", RULES)
    rules = rules_by_name(verdict)
    assert rules["min_agreement"].observed == pytest.approx(562 / 600)
    assert rules["min_slice_agreement"].observed == pytest.approx(262 / 300)
    assert verdict.meets and verdict.action == "up"
    # Another version's reviews are not this one's evidence.
    other = assess_readiness(read_agreement(tmp_path, "taxi", START, END), 5, "shadow", RULES)
    assert not other.meets and other.evidence is None


def test_partial_below_its_floor_moves_down_and_a_confident_band_is_narrowed(tmp_path):
    # 150 + 150 reviewed, every 2nd Credit Card case flipped: 225/300 = 75 % < the partial floor of 90 %.
    scripted_traffic(tmp_path, start=START, automation="partial", model_version=2, agreeing=150, disagreeing=150,
                     disagree_every=2)
    verdict = assess_readiness(read_agreement(tmp_path, "taxi", START, END), 2, "partial", RULES)
    assert verdict.move_down and verdict.move_down_to == "assist" and verdict.action == "down" and not verdict.meets
    assert verdict.floor.observed == pytest.approx(225 / 300) and verdict.floor.threshold == RULES.partial_floor
    # Full agreement everywhere, band cases included: narrowing suggested once 200 referred cases were reviewed.
    agreeing = tmp_path / "agreeing"
    cases = scripted_traffic(agreeing, start=START, automation="partial", model_version=2, agreeing=1200, disagreeing=0,
                             disagree_every=1, seed=7)
    referred = sum(1 for c in cases if c.decision == "refer_to_human")
    verdict = assess_readiness(read_agreement(agreeing, "taxi", START, END), 2, "partial", RULES)
    assert not verdict.move_down and referred >= RULES.band_narrowing_min_cases
    assert len(verdict.suggestions) == 1 and "narrow the band" in verdict.suggestions[0]
    # partial -> full also needs few referrals: the band (0.4, 0.6) of uniform scores refers about 20 %.
    rules = rules_by_name(verdict)
    assert rules["max_referral_rate"].observed == pytest.approx(referred / 1200) and not rules["max_referral_rate"].met
    assert rules["min_reviewed"].observed == 1200 and not rules["min_reviewed"].met


def test_floors_are_not_judged_on_a_handful_of_reviews(tmp_path):
    scripted_traffic(tmp_path, start=START, automation="full", model_version=1, agreeing=10, disagreeing=20,
                     disagree_every=1)
    verdict = assess_readiness(read_agreement(tmp_path, "taxi", START, END), 1, "full", RULES)
    assert verdict.floor.observed == pytest.approx(10 / 30) and verdict.floor.met and "not judged" in verdict.floor.detail
    assert verdict.next is None and not verdict.meets and verdict.rules == ()
    tight = dataclasses.replace(RULES, floor_min_reviewed=30)
    assert assess_readiness(read_agreement(tmp_path, "taxi", START, END), 1, "full", tight).move_down_to == "partial"


def test_degrees_and_config_values_are_checked():
    with pytest.raises(DataError, match="degree of automation must be one of"):
        assess_readiness(None, 1, "semi", RULES)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="automation.assist_min_agreement must be a share"):
        AutomationConfig(assist_min_agreement=90)
    config = config_from_dict({"automation": {"assist_min_reviewed": 50}}, root=__import__("pathlib").Path("/tmp"))
    assert config.automation.up_rules("shadow")["min_reviewed"] == 50
