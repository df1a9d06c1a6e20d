"""`Servable.load` loads every SavedModel into a TF1 session, as TF Serving does: TF2 exports too
(calls through a session keep no memory, a `tf.saved_model.load` function's do), and TF1 exports
that `tf.saved_model.load` cannot read; `tf.saved_model.load` only reads what the session loader
cannot. Real SavedModels: the half-plus-two exports of tests/fixtures/half_plus_two.py."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from tests.fixtures.half_plus_two import example_bytes, export_half_plus_two_tf1, export_half_plus_two_tf2

if TYPE_CHECKING:  # the module imports TensorFlow: tests import it when they run, not at collection
    from serving.model_server.servable import Servable


@pytest.fixture(scope="module")
def tf1_0_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_half_plus_two_tf1(tmp_path_factory.mktemp("tf1_0") / "export", shapeless_examples=True)


@pytest.fixture(scope="module")
def servable(tf1_0_export: Path) -> Servable:
    from serving.model_server.servable import Servable

    return Servable.load("half_plus_three", 1, tf1_0_export)


def test_the_tf2_loader_cannot_read_the_export(tf1_0_export: Path) -> None:
    """The case the fallback exists for (TF Serving's half_plus_three testdata fails the same way)."""
    import tensorflow as tf

    with pytest.raises(ValueError, match="Shape must be rank 1 but is rank 0 for .*ParseExample"):
        tf.saved_model.load(str(tf1_0_export))


def test_the_session_loader_serves_every_signature(servable: Servable) -> None:
    from serving.model_server.servable import SessionModule

    assert isinstance(servable._module, SessionModule)
    assert sorted(servable.signatures) == ["classify_x_to_y", "regress_x_to_y", "regress_x_to_y2", "serving_default"]
    used, outputs = servable.predict("", {"x": np.asarray([2.0, 3.0, 4.0], dtype=np.float32)})
    assert used == "serving_default"
    np.testing.assert_array_equal(outputs["y"], np.asarray([3.0, 3.5, 4.0], dtype=np.float32))
    examples = [example_bytes(2.0), example_bytes(4.0)]
    assert servable.regress("regress_x_to_y2", examples) == ("regress_x_to_y2", [4.0, 5.0])
    assert servable.classify("classify_x_to_y", examples) == ("classify_x_to_y", [[(b"", 3.0)], [(b"", 4.0)]])
    assert sorted(servable.signature_def_map().signature_def) == sorted(servable.signatures)


def test_session_feeds_any_shape_and_reports_the_graphs_error(servable: Servable) -> None:
    """No Python-side feed-shape check (Session.run has one, TF Serving's session has none)."""
    from serving.status import Code, ServingError

    _, outputs = servable.predict("", {"x": np.asarray([[2.0, 4.0]], dtype=np.float32)})
    np.testing.assert_array_equal(outputs["y"], np.asarray([[3.0, 4.0]], dtype=np.float32))
    with pytest.raises(ServingError) as caught:
        servable.predict("regress_x_to_y", {"inputs": np.asarray([[b"x"]], dtype=object)})
    assert caught.value.code == Code.INVALID_ARGUMENT
    assert caught.value.message.startswith("Expected serialized to be a vector, got shape: [1,1]")


def test_a_tf2_export_is_served_from_a_session_too(tmp_path: Path) -> None:
    from serving.model_server.servable import Servable, SessionModule

    servable = Servable.load("half_plus_two", 1, export_half_plus_two_tf2(tmp_path / "export"))
    assert isinstance(servable._module, SessionModule)
    _, outputs = servable.predict("", {"x": np.asarray([2.0, 3.0], dtype=np.float32)})
    np.testing.assert_array_equal(outputs["y"], np.asarray([3.0, 3.5], dtype=np.float32))


def test_what_the_session_loader_cannot_read_the_tf2_loader_serves(tmp_path: Path, monkeypatch, caplog) -> None:
    import logging

    from serving.model_server import servable as servable_module

    def unreadable(path: Path) -> None:
        raise ValueError(f"{path}: not for sessions")

    monkeypatch.setattr(servable_module.SessionModule, "load", staticmethod(unreadable))
    with caplog.at_level(logging.INFO, logger=servable_module.__name__):
        servable = servable_module.Servable.load("half_plus_two", 1, export_half_plus_two_tf2(tmp_path / "export"))
    assert not isinstance(servable._module, servable_module.SessionModule)
    _, outputs = servable.predict("", {"x": np.asarray([4.0], dtype=np.float32)})
    np.testing.assert_array_equal(outputs["y"], np.asarray([4.0], dtype=np.float32))
    assert "loaded with tf.saved_model.load (the TF1 session loader: ValueError: " in caplog.text


def test_a_model_neither_loader_reads_reports_the_tf2_loaders_error(tmp_path: Path) -> None:
    from serving.model_server.servable import Servable
    from serving.status import ServingError

    export = export_half_plus_two_tf2(tmp_path / "export")
    shutil.rmtree(export / "variables")
    with pytest.raises(ServingError) as caught:
        Servable.load("broken", 1, export)
    assert caught.value.message.startswith(f"Failed to load SavedModel at {export}: ")


def test_a_wrong_dtype_in_the_signature_def_does_not_matter(tf1_0_export: Path, tmp_path: Path) -> None:
    """TF Serving's half_plus_three testdata declares its serialized-Example input DT_FLOAT; the
    runtime only compares a fed tensor with the graph, so Regress still works there and here."""
    from tensorflow.core.framework import types_pb2
    from tensorflow.core.protobuf import saved_model_pb2

    from serving.model_server.servable import Servable

    export = tmp_path / "export"
    shutil.copytree(tf1_0_export, export)
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((export / "saved_model.pb").read_bytes())
    saved_model.meta_graphs[0].signature_def["regress_x_to_y"].inputs["inputs"].dtype = types_pb2.DT_FLOAT
    (export / "saved_model.pb").write_bytes(saved_model.SerializeToString())
    assert Servable.load("half_plus_three", 1, export).regress("regress_x_to_y", [example_bytes(2.0)]) == ("regress_x_to_y", [3.0])
