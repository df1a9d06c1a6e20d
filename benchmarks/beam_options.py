"""One Beam step alone under several Beam option sets: the measurements behind mlops.toml's
`[[beam.by_input_rows]]` table (which options each input size runs with by default).

Each (step, option set) runs in a fresh process: ingest reads the CSV; clean, validate (the raw and
the cleaned statistics, in one pipeline as the step runs them) and transform read a finished
pipeline run's ingest/clean outputs (`--run <pipeline_root>/runs/<run_id>`). Per run: wall seconds,
user+sys CPU seconds of the whole tree (the runner and, in multi_processing, its worker
subprocesses: they are waited for, so the child's getrusage(RUSAGE_CHILDREN) counts them), max RSS
of the largest process (the child's own ru_maxrss or its workers') and the peak of the tree's summed RSS (sampled from
/proc every 0.2 s, as benchmarks/pipeline_scale.py does), and the load average before and after:
on a shared machine wall seconds are noise, CPU seconds and RSS are not.

    .venvs/ml/bin/python benchmarks/beam_options.py --csv taxi-150000.csv --run RUN_DIR \\
        --steps ingest,clean,validate,transform --repeat 1 --out var/beam_options-150k.json

Option sets default to OPTION_SETS below (`--options name=--flag,--flag;name=...` to give others).
Prints a Markdown table; asserts nothing: it measures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.pipeline_scale import TreeSampler, _env  # noqa: E402

WINDOW = ("2013-01-01", "2017-01-01")
OPTION_SETS = {
    "in_memory x1": ["--runner=DirectRunner", "--direct_num_workers=1", "--direct_running_mode=in_memory"],
    "multi_processing x2": ["--runner=DirectRunner", "--direct_num_workers=2", "--direct_running_mode=multi_processing"],
    "multi_threading x2": ["--runner=DirectRunner", "--direct_num_workers=2", "--direct_running_mode=multi_threading"],
}
STEPS = ("ingest", "clean", "validate", "transform")
USAGE_FILE = "usage.json"


def run_step(step: str, csv_path: Path, run_dir: Path, out: Path, beam_args: list[str]) -> None:
    """The step's Beam job, called as mlops/steps.py calls it (in the child process)."""
    args = [*beam_args, f"--temp_location={out / 'tmp'}"]
    (out / "tmp").mkdir(parents=True, exist_ok=True)
    if step == "ingest":
        from beam_jobs.ingest import ingest_csv

        start, end = (dt.datetime.fromisoformat(day).replace(tzinfo=dt.timezone.utc) for day in WINDOW)
        ingest_csv(csv_path, out / "ingest", start=start, end=end, beam_args=args)
    elif step == "clean":
        from beam_jobs.clean import clean_examples

        clean_examples(run_dir / "ingest" / "examples", out / "clean", beam_args=args)
    elif step == "validate":
        from beam_jobs.statistics import generate_statistics_of

        generate_statistics_of({"raw": (run_dir / "ingest" / "examples", out / "statistics"),
                                "cleaned": (run_dir / "clean" / "cleaned", out / "cleaned_statistics")}, beam_args=args)
    elif step == "transform":
        from beam_jobs.transform import transform_examples

        transform_examples(run_dir / "clean" / "cleaned", out / "transform", beam_args=args)
    else:
        raise SystemExit(f"unknown step {step!r}; steps: {', '.join(STEPS)}")


def measure(step: str, name: str, beam_args: list[str], csv_path: Path, run_dir: Path, work: Path) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"{step}-", dir=work))
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, __file__, "--child", json.dumps([step, str(csv_path), str(run_dir), str(out), beam_args])],
                             cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    sampler = TreeSampler(child.pid)
    sampler.start()
    _, stderr = child.communicate()
    wall = time.perf_counter() - started
    sampler.done.set()
    sampler.join()
    if child.returncode != 0:
        raise SystemExit(f"{step} with {name} failed ({child.returncode}):\n{stderr[-3000:]}")
    usage = json.loads((out / USAGE_FILE).read_text())
    shutil.rmtree(out, ignore_errors=True)
    peak = sampler.peaks.get("start-up", {"tree": 0})  # the sampler's one phase: no progress lines here
    return {"step": step, "options": name, "beam_args": beam_args, "wall_seconds": round(wall, 1),
            "cpu_seconds": usage["cpu_seconds"], "max_rss_largest_process_mib": usage["max_rss_mib"],
            "peak_rss_tree_mib": round(peak["tree"] / 2**20),
            "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)]}


def table(results: list[dict]) -> str:
    lines = ["| step | options | wall s | user+sys CPU s | max RSS largest process MiB | peak RSS tree MiB | load before/after |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['step']} | {r['options']} | {r['wall_seconds']} | {r['cpu_seconds']} | "
                     f"{r['max_rss_largest_process_mib']:,} | {r['peak_rss_tree_mib']:,} | {r['load_average'][0]}/{r['load_average'][1]} |")
    return "\n".join(lines)


def _option_sets(text: str | None) -> dict[str, list[str]]:
    if not text:
        return dict(OPTION_SETS)
    sets = {}
    for entry in text.split(";"):
        name, _, flags = entry.partition("=")
        sets[name.strip()] = [flag for flag in flags.split(",") if flag]
    return sets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--csv", type=Path, help="ingest's input")
    parser.add_argument("--run", type=Path, help="a pipeline run's folder: clean, validate and transform read its outputs")
    parser.add_argument("--steps", default=",".join(STEPS))
    parser.add_argument("--options", help="option sets: 'name=--flag,--flag;name=...' (default: in_memory x1, "
                                          "multi_processing x2, multi_threading x2)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per (step, option set), interleaved")
    parser.add_argument("--work", type=Path, default=None, help="where outputs go while a run lasts (removed after)")
    parser.add_argument("--out", type=Path, help="a JSON file for the results")
    args = parser.parse_args(argv)
    if args.child:
        step, csv_path, run_dir, out, beam_args = json.loads(args.child)
        run_step(step, Path(csv_path), Path(run_dir), Path(out), beam_args)
        own, workers = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        # Workers (multi_processing) are waited for by the runner, so RUSAGE_CHILDREN holds their CPU
        # and the largest RSS any of them reached (KiB on Linux).
        (Path(out) / USAGE_FILE).write_text(json.dumps({
            "cpu_seconds": round(sum(u.ru_utime + u.ru_stime for u in (own, workers)), 1),
            "max_rss_mib": round(max(own.ru_maxrss, workers.ru_maxrss) / 1024)}))
        return 0
    work = args.work or Path(tempfile.mkdtemp(prefix="beam-options-"))
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for step in args.steps.split(","):
        for _ in range(args.repeat):
            for name, beam_args in _option_sets(args.options).items():
                result = measure(step, name, beam_args, args.csv, args.run, work)
                results.append(result)
                print(json.dumps(result), file=sys.stderr, flush=True)
                if args.out:
                    args.out.parent.mkdir(parents=True, exist_ok=True)
                    args.out.write_text(json.dumps({"csv": str(args.csv), "run": str(args.run), "results": results}, indent=1))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
