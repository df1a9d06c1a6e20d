"""Times the whole training pipeline, per step, on the TFX taxi example's protocol.

Protocol: all 15,002 shipped rows (window 2013-01-01 .. 2017-01-01), 2:1 hash split, 1,000
training steps of batch 40. Each run uses a fresh temp directory (no cache reuse), in a fresh
process, so imports are counted as a user would pay them. Prints numbers; asserts nothing.

    .venvs/ml/bin/python benchmarks/pipeline_benchmark.py [--runs 1] [--train-steps 1000]

For comparison, the TFX 1.16 LocalDagRunner run of the same example took 158-168 s on this
machine (imports 14 s, Transform 46 s, Evaluator 22-26 s).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_CHILD = r"""
import json, sys, time
began = time.time()
from core.config import config_from_dict
from mlops.pipeline import run_pipeline
import tensorflow, apache_beam, tensorflow_transform  # what a step pays for on first use
imported = time.time() - began
root, steps, csv, schema = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
config = config_from_dict({
    "pipeline_root": "pipeline", "metadata": {"sqlite_path": "mlmd.sqlite"},
    "serving": {"model_base_dir": "models", "model_config_file": "models.config"},
    "data": {"csv_path": csv, "schema_path": schema},
    "training": {"train_steps": steps, "batch_size": 40},
}, __import__("pathlib").Path(root))
result = run_pipeline(config, start="2013-01-01", end="2017-01-01", progress=lambda line: print(line, file=sys.stderr))
print(json.dumps({"imports": imported, "total": time.time() - began,
                  "steps": {k: v.seconds for k, v in result.outcomes.items()},
                  "metrics": result.outcomes["evaluate"].results.get("metrics"),
                  "rows": result.outcomes["clean"].results}))
"""


def run_once(train_steps: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="mlops-bench-") as root:
        env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
        started = time.time()
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, root, str(train_steps), str(ROOT / "data/taxi/data.csv"),
             str(ROOT / "data/taxi/schema.pbtxt")],
            cwd=ROOT, env=env, capture_output=True, text=True,
        )
        wall = time.time() - started
        if done.returncode != 0:
            raise SystemExit(f"pipeline failed:\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        result["wall"] = wall
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--train-steps", type=int, default=1000)
    args = parser.parse_args()
    for run in range(1, args.runs + 1):
        result = run_once(args.train_steps)
        metrics = result["metrics"] or {}
        print(f"run {run}: wall {result['wall']:.1f}s (process {result['total']:.1f}s, imports {result['imports']:.1f}s)")
        for name, seconds in result["steps"].items():
            print(f"  {name:<10} {seconds:7.1f}s")
        print("  eval:", ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
        rows = result["rows"]
        print(f"  rows: in {rows['rows_in']} kept {rows['rows_kept']} rejected {rows['rows_rejected']}")


if __name__ == "__main__":
    main()
