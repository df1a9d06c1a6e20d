"""The train or evaluate step alone, in this fresh process, on a finished pipeline run: its peak RSS
and wall seconds, to compare two versions of the code on the same outputs (docs/SCALE.md).

RUN_DIR is one run of a pipeline root (`<root>/runs/<run id>`, holding `clean/`, `transform/` and
`train/`). Evaluate scores the trained model twice, as candidate and as the served baseline, as a
pipeline re-run with a served model does. Old code side by side: run it with PYTHONPATH set to a
checkout of the old commit.

    .venvs/ml/bin/python benchmarks/step_alone.py train RUN_DIR
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("train", "evaluate"))
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        if args.step == "evaluate":
            from core.config import EvaluationConfig
            from trainer.evaluate import evaluate_model

            model = args.run_dir / "train" / "model"
            result = evaluate_model(model, args.run_dir / "clean" / "cleaned", Path(out), config=EvaluationConfig(),
                                    baseline_model_dir=model, baseline_label="served")
            metrics = result.metrics
        else:
            from core.config import TrainingConfig
            from trainer.train import train_model

            trained = train_model(args.run_dir / "transform" / "transformed", args.run_dir / "transform" / "transform_graph",
                                  Path(out), TrainingConfig())
            metrics = {"train": trained.train_metrics, "eval": trained.eval_metrics}
    print(json.dumps({"step": args.step, "run_dir": str(args.run_dir), "seconds": round(time.perf_counter() - started, 1),
                      "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024), "metrics": metrics}))


if __name__ == "__main__":
    main()
