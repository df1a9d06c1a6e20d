"""The model repository the contract suite runs against, and how to write versions into it safely.

`taxi` has versions 1 (weight 1.0) and 2 (weight -1.0) of the tiny contract model, policy
`specific {1, 2}`, labels `stable` -> 1 and `canary` -> 2. To run the suite against a real
TF Serving, write the layout, start the server on it, and point the suite at it:

    python -m tests.serving.contract.layout /srv/contract [--server-root /models]
    tensorflow_model_server --port=8500 --rest_api_port=8501 \\
        --model_config_file=/models/models.config --model_config_file_poll_wait_seconds=1 \\
        --file_system_poll_wait_seconds=1 --allow_version_labels_for_unavailable_models \\
        --monitoring_config_file=/models/monitoring.config
    TFSERVING_REST_URL=http://localhost:8501 TFSERVING_GRPC_TARGET=localhost:8500 \\
        TFSERVING_MODEL_BASE_PATH=/srv/contract TFSERVING_SERVER_BASE_PATH=/models \\
        .venvs/ml/bin/python -m pytest tests/serving/contract

(`--server-root` is the directory as the server sees it, e.g. a Docker volume mount.)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import secrets
import shutil
import sys
import time
from pathlib import Path
from typing import Mapping, Sequence

from tensorflow_serving.config import model_server_config_pb2

CONTRACT_MODEL = "taxi"
STABLE_VERSION, CANARY_VERSION = 1, 2
WEIGHTS: Mapping[int, float] = {STABLE_VERSION: 1.0, CANARY_VERSION: -1.0}
CONFIG_NAME = "models.config"
MONITORING_NAME = "monitoring.config"
METRICS_PATH = "/monitoring/prometheus/metrics"


@dataclasses.dataclass(frozen=True)
class ContractLayout:
    root: Path  # local path
    server_root: str  # the same directory as the server sees it
    config_file: Path
    monitoring_file: Path


def export_models(cache_dir: Path, weights: Sequence[float]) -> dict[float, Path]:
    """Exports the tiny model once per weight (real SavedModels; copies are cheap, exports are not)."""
    from tests.fixtures.tiny_model import export_tiny_model

    exported: dict[float, Path] = {}
    for weight in weights:
        target = cache_dir / f"tiny_{weight:+.3f}"
        if not (target / "saved_model.pb").is_file():
            export_tiny_model(target, weight=weight)
        exported[weight] = target
    return exported


def export_examples_model(export_dir: Path) -> Path:
    """A SavedModel with classify and regress signatures, built like an Estimator export (TF1 graph,
    serialized tf.Examples in): P(big tipper) = sigmoid(2*card - 1 + 0.01*fare), predicted tip 0.2*fare.

    Signatures: `serving_default` and `classify` (classes + scores), `scores_only` (scores),
    `tip` (regress), `predict` (predict)."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        serialized = tf.compat.v1.placeholder(tf.string, [None], name="input_example_tensor")
        parsed = tf.io.parse_example(
            serialized,
            {
                "fare": tf.io.FixedLenFeature([], tf.float32, default_value=0.0),
                "payment_type": tf.io.FixedLenFeature([], tf.string, default_value=""),
            },
        )
        card = tf.cast(tf.equal(parsed["payment_type"], "Credit Card"), tf.float32)
        probability = tf.sigmoid(2.0 * card - 1.0 + 0.01 * parsed["fare"])
        scores = tf.stack([1.0 - probability, probability], axis=1)
        classes = tf.tile(tf.constant([["small", "big"]]), [tf.shape(serialized)[0], 1])
        tip = tf.expand_dims(0.2 * parsed["fare"], 1)
        signatures = tf.compat.v1.saved_model
        signature_map = {
            "serving_default": signatures.classification_signature_def(serialized, classes, scores),
            "classify": signatures.classification_signature_def(serialized, classes, scores),
            "scores_only": signatures.classification_signature_def(serialized, None, scores),
            "tip": signatures.regression_signature_def(serialized, tip),
            "predict": signatures.predict_signature_def({"examples": serialized}, {"probability": probability}),
        }
        with tf.compat.v1.Session(graph=graph) as session:
            builder = signatures.Builder(str(export_dir))
            builder.add_meta_graph_and_variables(session, [tf.compat.v1.saved_model.tag_constants.SERVING], signature_def_map=signature_map)
            builder.save()
    return Path(export_dir)


def install_version(source: Path, model_root: Path, version: int, *, seconds_per_file: float = 0.0) -> Path:
    """Copies a SavedModel in as `model_root/<version>` the way a push does: into a hidden temp
    directory first (servers ignore names that are not integers), then one rename.

    `seconds_per_file` slows the copy down so a test can watch the server while it is half done."""
    model_root.mkdir(parents=True, exist_ok=True)
    temp = model_root / f".tmp-{version}-{secrets.token_hex(3)}"
    temp.mkdir()
    for path in sorted(source.rglob("*")):
        target = temp / path.relative_to(source)
        if path.is_dir():
            target.mkdir(exist_ok=True)
            continue
        shutil.copy2(path, target)
        if seconds_per_file:
            time.sleep(seconds_per_file)  # a slow push on purpose: time passes between files
    final = model_root / str(version)
    os.rename(temp, final)
    return final


def model_entry(
    name: str,
    base_path: str,
    *,
    specific: Sequence[int] | None = None,
    latest: int | None = None,
    labels: Mapping[str, int] | None = None,
) -> model_server_config_pb2.ModelConfig:
    entry = model_server_config_pb2.ModelConfig(name=name, base_path=base_path, model_platform="tensorflow")
    if specific is not None:
        entry.model_version_policy.specific.versions.extend(specific)
    elif latest is not None:
        entry.model_version_policy.latest.num_versions = latest
    for label, version in (labels or {}).items():
        entry.version_labels[label] = version
    return entry


def write_contract_layout(root: Path, exported: Mapping[float, Path], *, server_root: str | None = None) -> ContractLayout:
    from serving.model_config import write_model_config

    root = Path(root).resolve()
    server_root = server_root or str(root)
    for version, weight in WEIGHTS.items():
        if not (root / CONTRACT_MODEL / str(version)).exists():
            install_version(exported[weight], root / CONTRACT_MODEL, version)
    config = model_server_config_pb2.ModelServerConfig()
    config.model_config_list.config.append(
        model_entry(
            CONTRACT_MODEL,
            f"{server_root}/{CONTRACT_MODEL}",
            specific=sorted(WEIGHTS),
            labels={"stable": STABLE_VERSION, "canary": CANARY_VERSION},
        )
    )
    config_file = root / CONFIG_NAME
    write_model_config(config, config_file)
    monitoring = root / MONITORING_NAME
    monitoring.write_text(f'prometheus_config {{ enable: true path: "{METRICS_PATH}" }}\n', encoding="utf-8")
    return ContractLayout(root, server_root, config_file, monitoring)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the contract suite's model repository.")
    parser.add_argument("root", type=Path)
    parser.add_argument("--server-root", default=None, help="the root as the model server sees it")
    args = parser.parse_args(argv)
    args.root.mkdir(parents=True, exist_ok=True)
    exported = export_models(args.root / ".exports", sorted(set(WEIGHTS.values())))
    layout = write_contract_layout(args.root, exported, server_root=args.server_root)
    print(f"wrote {layout.config_file} (server path {layout.server_root}/{CONFIG_NAME})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
