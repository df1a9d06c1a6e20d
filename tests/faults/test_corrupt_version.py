"""A half-written or corrupted model version directory appears in the model base path while a good
version serves: the model server never loads it, every request is still answered by the good
version, and GetModelStatus (REST `/v1/models/<name>/versions/<v>`) says why the new one is not
served. Each corruption is one a dying copy or a bad disk leaves (scenarios.CORRUPTIONS)."""

from __future__ import annotations

from tests.faults.scenarios import CORRUPTIONS, corrupt_versions
from tests.serving.conftest import model_root  # noqa: F401 - fixture, found by name
from tests.serving.gateway.helpers import STABLE_VERSION


def test_corrupted_version_directories_are_never_loaded_and_the_old_version_serves(model_root, tmp_path):  # noqa: F811
    outcomes = corrupt_versions(model_root, tmp_path)

    assert [o.corruption for o in outcomes] == list(CORRUPTIONS)
    for outcome in outcomes:
        assert outcome.state == "END", outcome
        assert outcome.error, f"{outcome.corruption}: the status does not say why version {outcome.version} is not served"
        assert outcome.failures == 0, outcome
        assert set(outcome.served_versions) == {STABLE_VERSION}, outcome
        print(f"\n{outcome.corruption}: {outcome.error}")
