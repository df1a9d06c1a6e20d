"""Pushing SavedModels to TF Serving's base path: versions, reuse, atomicity, models.config, concurrency."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

from core.errors import DataError
from serving import model_config as mc
from serving.push import FINGERPRINT_FILE, PushResult, model_fingerprint, push_model

# TensorFlow is imported inside fixtures and tests only: the concurrency test spawns processes
# that import this module, and they must not pay TF's ~14 s import.


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tests.fixtures.tiny_model import export_tiny_model

    root = tmp_path_factory.mktemp("tiny_models")
    return {
        "a": export_tiny_model(root / "a", weight=1.0),
        "b": export_tiny_model(root / "b", weight=-1.0),
    }


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def _predict(model_path: Path) -> list[float]:
    import tensorflow as tf

    from beam_jobs.example_codec import serialize_row

    loaded = tf.saved_model.load(str(model_path))
    rows = [{"payment_type": "Credit Card", "fare": 10.0}, {"payment_type": "Cash", "fare": 3.0}]
    outputs = loaded.signatures["serving_examples"](examples=tf.constant([serialize_row(r) for r in rows]))
    return [float(p) for p in outputs["probability"].numpy()]


def test_versions_count_up_and_each_is_a_complete_copy(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    base = tmp_path / "models"
    first = push_model(tiny_models["a"], base, "taxi")
    second = push_model(tiny_models["b"], base, "taxi")
    assert (first.version, first.reused) == (1, False)
    assert (second.version, second.reused) == (2, False)
    assert second.path == base.resolve() / "taxi" / "2"
    assert sorted(p.name for p in (base / "taxi").iterdir() if not p.name.startswith(".")) == ["1", "2"]
    assert _files(second.path) == _files(tiny_models["b"]) | {FINGERPRINT_FILE}
    assert (second.path / FINGERPRINT_FILE).read_text().strip() == model_fingerprint(tiny_models["b"])
    assert _predict(second.path) == _predict(tiny_models["b"]) != _predict(first.path)


def test_pushing_the_same_model_again_reuses_its_version(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    base = tmp_path / "models"
    push_model(tiny_models["a"], base, "taxi")
    push_model(tiny_models["b"], base, "taxi")
    again = push_model(tiny_models["a"], base, "taxi")
    assert again == PushResult("taxi", 1, base.resolve() / "taxi" / "1", reused=True)
    assert not (base / "taxi" / "3").exists()
    # An explicit fingerprint (e.g. the training execution's) is what identifies the model then.
    explicit = push_model(tiny_models["a"], base, "taxi", fingerprint="run-7")
    assert (explicit.version, explicit.reused) == (3, False)
    assert push_model(tiny_models["b"], base, "taxi", fingerprint="run-7").version == 3


def test_fingerprint_ignores_location_but_not_content(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_models["a"], copy)
    assert model_fingerprint(copy) == model_fingerprint(tiny_models["a"]) != model_fingerprint(tiny_models["b"])
    data_file = next((copy / "variables").glob("variables.data-*"))
    data_file.write_bytes(data_file.read_bytes() + b"\0")
    assert model_fingerprint(copy) != model_fingerprint(tiny_models["a"])


def test_config_gets_stable_on_first_push_and_push_never_moves_it(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    base, config_file = tmp_path / "models", tmp_path / "models.config"
    push_model(tiny_models["a"], base, "taxi", config_file=config_file)
    config = mc.read_model_config(config_file)
    assert mc.served_versions(config, "taxi") == [1]
    assert mc.labels(config, "taxi") == {"stable": 1}
    assert mc.get_model(config, "taxi").base_path == str(base.resolve() / "taxi")

    push_model(tiny_models["b"], base, "taxi", config_file=config_file)
    config = mc.read_model_config(config_file)
    assert mc.served_versions(config, "taxi") == [1, 2]
    assert mc.labels(config, "taxi") == {"stable": 1}

    # A rollout retires version 1 and promotes 2; re-pushing model b changes nothing of that.
    def promote(config: mc.ModelServerConfig) -> None:
        mc.set_label(config, "taxi", "stable", 2)
        mc.set_served_versions(config, "taxi", [2])

    mc.update_model_config(config_file, promote)
    assert push_model(tiny_models["b"], base, "taxi", config_file=config_file).reused
    config = mc.read_model_config(config_file)
    assert (mc.served_versions(config, "taxi"), mc.labels(config, "taxi")) == ([2], {"stable": 2})


def test_reused_push_repairs_a_config_that_missed_the_version(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    base, config_file = tmp_path / "models", tmp_path / "models.config"
    push_model(tiny_models["a"], base, "taxi")  # e.g. died before updating the config
    result = push_model(tiny_models["a"], base, "taxi", config_file=config_file)
    assert result.reused
    config = mc.read_model_config(config_file)
    assert (mc.served_versions(config, "taxi"), mc.labels(config, "taxi")) == ([1], {"stable": 1})


def test_not_a_saved_model_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: not a SavedModel directory \(no saved_model.pb\)"):
        push_model(tmp_path / "empty", tmp_path / "models", "taxi")
    assert not (tmp_path / "models").exists()


def test_a_failed_copy_leaves_no_version_and_no_temp_dir(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_models["a"], broken)
    (broken / "assets").mkdir(exist_ok=True)
    (broken / "assets" / "vocab.txt").symlink_to(tmp_path / "does-not-exist")
    with pytest.raises(DataError, match=r"cannot copy the SavedModel .*broken.*vocab.txt"):
        push_model(broken, tmp_path / "models", "taxi")
    assert [p.name for p in (tmp_path / "models" / "taxi").iterdir()] == [".push.lock"]


def test_temp_dir_of_an_interrupted_push_is_cleaned_and_ignored(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    model_root = tmp_path / "models" / "taxi"
    (model_root / ".tmp-1-deadbeef" / "variables").mkdir(parents=True)
    result = push_model(tiny_models["a"], tmp_path / "models", "taxi")
    assert result.version == 1
    assert not (model_root / ".tmp-1-deadbeef").exists()


def test_a_watcher_never_sees_a_half_written_version(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """What TF Serving does: poll the base path and load every integer directory it sees."""
    import tensorflow as tf

    source = tmp_path / "big"
    shutil.copytree(tiny_models["a"], source)
    # Padding makes each copy take long enough for the watcher to look inside a partial one.
    (source / "assets").mkdir(exist_ok=True)
    (source / "assets" / "padding.bin").write_bytes(os.urandom(16 << 20))
    expected_files = _files(source) | {FINGERPRINT_FILE}
    model_root = tmp_path / "models" / "taxi"
    pushes = 4
    done = threading.Event()
    failures: list[str] = []
    seen: set[str] = set()

    def push_all() -> None:
        try:
            for number in range(pushes):
                push_model(source, tmp_path / "models", "taxi", fingerprint=f"push-{number}")
        finally:
            done.set()

    def watch_once() -> None:
        if not model_root.is_dir():
            return
        for entry in sorted(model_root.iterdir()):
            if not entry.name.isdigit() or entry.name in seen:
                continue
            seen.add(entry.name)
            if _files(entry) != expected_files:
                failures.append(f"version {entry.name} visible with files {sorted(_files(entry))}")
                continue
            try:
                tf.saved_model.load(str(entry)).signatures["serving_examples"]
            except Exception as err:  # noqa: BLE001 -- any failure to load is the finding
                failures.append(f"version {entry.name} failed to load: {err}")

    pusher = threading.Thread(target=push_all)
    pusher.start()
    while not done.is_set():
        watch_once()
    pusher.join()
    watch_once()
    assert failures == []
    assert seen == {str(v) for v in range(1, pushes + 1)}


def _push_many(model_dir: str, base: str, config_file: str, worker: int, count: int, barrier: Any, out: str) -> None:
    barrier.wait()  # both processes start allocating versions at the same moment
    pushed = []
    for number in range(count):
        fingerprint = f"worker{worker}-{number}"
        result = push_model(Path(model_dir), Path(base), "taxi", fingerprint=fingerprint, config_file=Path(config_file))
        pushed.append((result.version, result.reused, fingerprint))
    Path(out).write_text(json.dumps(pushed))


def test_concurrent_pushes_from_two_processes_get_distinct_versions(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    # Without the lock, 15 pushes each collide on a version number (checked by removing it).
    base, config_file, per_worker = tmp_path / "models", tmp_path / "models.config", 15
    outputs = [tmp_path / f"worker{w}.json" for w in range(2)]
    workers = [
        context.Process(
            target=_push_many,
            args=(str(tiny_models["a"]), str(base), str(config_file), w, per_worker, barrier, str(outputs[w])),
        )
        for w in range(2)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
        assert worker.exitcode == 0, "a pushing process failed (its traceback is in the captured stderr)"
    pushed = [tuple(item) for out in outputs for item in json.loads(out.read_text())]
    versions = sorted(version for version, _, _ in pushed)
    assert versions == list(range(1, 2 * per_worker + 1))
    assert not any(reused for _, reused, _ in pushed)
    for version, _, fingerprint in pushed:
        assert (base / "taxi" / str(version) / FINGERPRINT_FILE).read_text().strip() == fingerprint
    config = mc.read_model_config(config_file)
    assert mc.served_versions(config, "taxi") == versions
    assert mc.labels(config, "taxi") == {"stable": 1}
