"""Which code a step's cache key covers: the modules doing its work and everything they import, nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.version import module_closure, modules_hash
from mlops.steps import step_code

PACKAGES = ("pkg", "other")


def write(root: Path, relative: str, text: str = "") -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    write(tmp_path, "pkg/__init__.py")
    write(tmp_path, "pkg/step.py", "from pkg import helpers\n\ndef run():\n    from .lazy import heavy  # imported only when the step runs\n")
    write(tmp_path, "pkg/helpers.py", "import other.shared\n")
    write(tmp_path, "pkg/lazy.py", "from other.shared import CONSTANT\n\ndef heavy(): ...\n")
    write(tmp_path, "pkg/unrelated.py", "import pkg.step\n")  # imports the step; the step does not import it
    write(tmp_path, "other/__init__.py")
    write(tmp_path, "other/shared.py", "import json\nimport numpy\nCONSTANT = 1\n")
    return tmp_path


def test_the_closure_follows_module_level_function_level_and_relative_imports(tree):
    assert module_closure(["pkg.step"], tree, PACKAGES) == [
        "other", "other.shared", "pkg", "pkg.helpers", "pkg.lazy", "pkg.step"]


def test_modules_that_only_import_the_step_are_not_part_of_it(tree):
    assert "pkg.unrelated" not in module_closure(["pkg.step"], tree, PACKAGES)
    assert "pkg.step" in module_closure(["pkg.unrelated"], tree, PACKAGES)


def test_a_name_that_is_no_project_module_is_refused(tree):
    with pytest.raises(ValueError, match=r"no project module \['pkg.missing'\]"):
        module_closure(["pkg.missing"], tree, PACKAGES)
    with pytest.raises(ValueError, match="no project module"):
        module_closure(["json"], tree, PACKAGES)  # not one of the project's packages


@pytest.mark.parametrize(
    "entry, must_cover",
    [
        ("beam_jobs.ingest", {"beam_jobs.csv_source", "transforms.features"}),
        ("beam_jobs.clean", {"beam_jobs.outputs", "transforms.features"}),
        ("beam_jobs.transform", {"transforms.preprocessing", "transforms.features"}),
        ("trainer.train", {"trainer.model", "transforms.preprocessing", "core.config"}),
        ("trainer.evaluate", {"trainer.report", "transforms.features"}),
    ],
)
def test_each_training_step_covers_its_features_but_not_serving_monitoring_or_airflow(entry, must_cover):
    closure = set(module_closure([entry]))
    assert must_cover <= closure
    assert not {name for name in closure if name.split(".")[0] in ("serving", "monitoring")}
    assert not {name for name in closure if name.split(".")[0] == "mlops"}  # mlops.airflow.*, loop, cli, steps


def test_a_steps_code_digest_changes_with_its_modules_only():
    train, evaluate = step_code("trainer.train"), step_code("trainer.evaluate")
    assert train != evaluate
    assert train == step_code("trainer.train")  # stable for the same code
    # The driver (mlops/steps.py) is part of every step's digest: its second half is shared.
    assert train[16:] == evaluate[16:]


def test_a_misspelt_module_is_refused_whether_or_not_imports_are_followed():
    with pytest.raises(ValueError, match=r"no project module \['mlops.stepz'\]"):
        modules_hash(("mlops.stepz",), follow_imports=False)
    with pytest.raises(ValueError, match="no project module"):
        modules_hash(("mlops.stepz",))
