"""Two training runs push at the same moment (two real processes calling serving.push.push_model on
one base path and one models.config): each gets its own version, each version directory holds the
model that was pushed as it, and models.config serves exactly the versions on disk, round after round."""

from __future__ import annotations

from tests.faults.scenarios import concurrent_pushes
from tests.serving.conftest import model_root  # noqa: F401 - fixture, found by name


def test_simultaneous_pushes_get_distinct_versions_and_a_consistent_config(model_root, tmp_path):  # noqa: F811
    outcome = concurrent_pushes(model_root, tmp_path, pushers=2, rounds=3)

    assert not outcome.config_problems, outcome.config_problems
    every_version = [v for r in outcome.rounds for v in r["versions"].values()]
    assert sorted(every_version) == list(range(1, 7)), outcome.rounds
    assert outcome.rounds[-1]["served"] == list(range(1, 7))
    assert outcome.rounds[-1]["labels"] == {"stable": 1}, "a push moved the stable label"
