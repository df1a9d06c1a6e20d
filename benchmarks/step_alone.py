"""One step (clean, transform, train or evaluate) alone, in this fresh process, on a finished
pipeline run: its peak RSS and wall seconds, to compare two versions of the code, or two settings
of the process (e.g. MALLOC_ARENA_MAX), on the same outputs (docs/SCALE.md).

RUN_DIR is one run of a pipeline root (`<root>/runs/<run id>`, holding `ingest/`, `clean/`,
`transform/` and `train/`). Clean and transform run with the Beam options the default config
gives an input of unknown size. Evaluate scores the trained model twice, as candidate and as the
served baseline, as a pipeline re-run with a served model does. Old code side by side: run it with
PYTHONPATH set to a checkout of the old commit.

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
    parser.add_argument("step", choices=("clean", "transform", "train", "evaluate"))
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        if args.step in ("clean", "transform"):
            metrics = beam_step(args.step, args.run_dir, Path(out))
        elif args.step == "evaluate":
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


def beam_step(step: str, run_dir: Path, out: Path) -> dict:
    from core.config import load_config

    config = load_config().replace(pipeline_root=out / "root")
    # The shipped config has one entry for every input size; a row count would not change it.
    choice = config.beam_options()
    if step == "clean":
        from beam_jobs.clean import clean_examples

        result = clean_examples(run_dir / "ingest" / "examples", out / "clean", beam_args=config.pipeline_args(choice))
        return {"rows_kept": result.rows_kept, "rows_rejected": result.rows_rejected, "beam": choice.why}
    from beam_jobs.transform import transform_examples

    result = transform_examples(run_dir / "clean" / "cleaned", out / "transform", beam_args=config.pipeline_args(choice))
    return {"rows": result.rows, "beam": choice.why}


if __name__ == "__main__":
    main()
