"""One step (clean, transform, train or evaluate) alone, in this fresh process, on a finished
pipeline run: its peak RSS and wall seconds, to compare two versions of the code, or two settings
of the process (e.g. MALLOC_ARENA_MAX), on the same outputs (docs/SCALE.md). Also ingest and
batch predict on a CSV (plain or compressed), which need no run.

RUN_DIR is one run of a pipeline root (`<root>/runs/<run id>`, holding `ingest/`, `clean/`,
`transform/` and `train/`). Clean and transform run with the Beam options the default config
gives an input of unknown size. Evaluate scores the trained model twice, as candidate and as the
served baseline, as a pipeline re-run with a served model does. Old code side by side: run it with
PYTHONPATH set to a checkout of the old commit.

    .venvs/ml/bin/python benchmarks/step_alone.py train RUN_DIR
    .venvs/ml/bin/python benchmarks/step_alone.py ingest --csv var/taxi-1.5M.csv.gz
    .venvs/ml/bin/python benchmarks/step_alone.py predict --csv var/taxi-1.5M.csv --model var/serving/models/taxi/1
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
    parser.add_argument("step", choices=("ingest", "clean", "transform", "train", "evaluate", "predict"))
    parser.add_argument("run_dir", type=Path, nargs="?", help="a finished run (clean, transform, train, evaluate)")
    parser.add_argument("--csv", type=Path, help="the CSV (ingest, predict)")
    parser.add_argument("--model", type=Path, help="a SavedModel version directory (predict)")
    args = parser.parse_args()
    needs = {"ingest": ("csv",), "predict": ("csv", "model")}.get(args.step, ("run_dir",))
    missing = [name for name in needs if getattr(args, name) is None]
    if missing:
        parser.error(f"{args.step} needs {', '.join(missing)}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        if args.step in ("ingest", "predict"):
            metrics = csv_step(args.step, args.csv, args.model, Path(out))
        elif args.step in ("clean", "transform"):
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
    print(json.dumps({"step": args.step, "run_dir": str(args.run_dir or args.csv), "seconds": round(time.perf_counter() - started, 1),
                      "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024), "metrics": metrics}))


def csv_step(step: str, csv_path: Path, model_dir: Path | None, out: Path) -> dict:
    import datetime as dt

    from core.config import load_config

    config = load_config().replace(pipeline_root=out / "root")
    args = config.pipeline_args(config.beam_options())
    if step == "ingest":
        from beam_jobs.ingest import ingest_csv

        utc = dt.timezone.utc
        result = ingest_csv(csv_path, out / "ingest", start=dt.datetime(1970, 1, 1, tzinfo=utc),
                            end=dt.datetime(2100, 1, 1, tzinfo=utc), beam_args=args)
        return {"rows_read": result.rows_read, "splits": result.split_counts, "rows_unparseable": result.rows_unparseable}
    from beam_jobs.batch_predict import batch_predict

    scored = batch_predict(csv_path, model_dir, out / "predict", beam_args=args)
    return {"rows_scored": scored.rows_scored, "rows_rejected": scored.rows_rejected, "positive_rate": scored.positive_rate}


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
