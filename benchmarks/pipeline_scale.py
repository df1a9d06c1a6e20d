"""The whole pipeline at growing row counts: per step seconds, rows/s, peak RSS and growth per size.

For each size: `mlops data synth` writes that many rows (seeded, resampled from the shipped
sample), then `mlops pipeline run --csv FILE --json` runs in a fresh process with a fresh pipeline
root and ML Metadata database (no reuse), 1,000 training steps of batch 40 as TFX's taxi example.
A sampler reads /proc every 0.2 s for the process and all its descendants: per step, the peak RSS
of the largest single process and of the whole tree (the tree sums each process's RSS, so pages
shared between processes count once per process: an upper bound). Steps are told apart by the
pipeline's own progress lines ("[3/7] validate  running ..."), timed as they arrive; the seconds
per step are the pipeline's own (its JSON outcome).

    .venvs/ml/bin/python benchmarks/pipeline_scale.py --sizes 15000,150000 [--sizes ...,1500000]

Beam options: the project's own default, i.e. mlops.toml's `beam_args` if it sets one, else its
`[[beam.by_input_rows]]` table (each step chooses by the size of its input); `--beam-args "..."`
runs every step with the given ones instead. The JSON records, per step, the options it ran with
and why.

Prints a table, writes docs/scale/pipeline_scale.json and docs/scale/pipeline_scale.svg (seconds and
peak RSS vs rows, TFX 1.16's figures from issue 14 beside them). Asserts nothing: it measures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_SECONDS = 0.2
STEP_LINE = re.compile(r"^\[(\d+)/(\d+)\] (\w+)\s+running")
WINDOW = ("2013-01-01", "2017-01-01")
# TFX 1.16 taxi pipeline (LocalDagRunner, 1,000 steps; ../shared/peers/tfx_taxi/run_once.sh) on the
# machine of the last measurement, idle, with the same CSVs (2026-12-07, session 14; the shipped
# sample and `mlops data synth --seed 0`): rows -> (wall seconds, peak RSS of the largest process in
# GiB). Earlier machines: 104.2 / 130.7 / 355.3 s (2026-12-06); issue 14's, shared: 139 / 181 / 495 s.
TFX = {15_002: (128.1, 1.12), 150_000: (157.4, 1.39), 1_500_000: (419.7, 4.21)}
_CONFIG = """\
pipeline_root = "pipeline"
{own_processes}{beam}
[data]
schema_path = "{schema}"
[training]
train_steps = {steps}
batch_size = 40
[serving]
model_base_dir = "models"
model_config_file = "models.config"
[metadata]
backend = "sqlite"
sqlite_path = "mlmd.sqlite"
"""


def beam_config(beam_args: Sequence[str] | None, project_config: Path = ROOT / "mlops.toml") -> str:
    """The generated config's Beam settings: `beam_args` when given, else the project config's own
    (its `beam_args`, or its `[[beam.by_input_rows]]` table), so the benchmark runs what a user runs."""
    if beam_args is None:
        project = tomllib.loads(project_config.read_text())
        beam_args = project.get("beam_args")
        if beam_args is None:
            return "".join(f"[[beam.by_input_rows]]\n{_toml_entry(entry)}" for entry in project.get("beam", {}).get("by_input_rows", []))
    return f"beam_args = {json.dumps(list(beam_args))}\n"


def own_processes_config(project_config: Path = ROOT / "mlops.toml") -> str:
    """The project config's `steps_in_own_process_from_rows`, if it sets one (else the default applies)."""
    value = tomllib.loads(project_config.read_text()).get("steps_in_own_process_from_rows")
    return "" if value is None else f"steps_in_own_process_from_rows = {int(value)}\n"


def _toml_entry(entry: dict[str, Any]) -> str:
    # JSON's strings and arrays of strings and integers are TOML's too.
    return "".join(f"{key} = {json.dumps(value)}\n" for key, value in entry.items())


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return 0  # the process ended between listing and reading


def _process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                # The command name may hold spaces and parentheses: the fields after the last ')'.
                parent = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


class TreeSampler(threading.Thread):
    """Peak RSS (largest process, whole tree) of a process tree, per named phase."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.phase = "start-up"
        self.peaks: dict[str, dict[str, int]] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            sizes = [_rss_bytes(pid) for pid in _process_tree(self.pid)]
            # A phase's first sample also keeps where it started: when one process runs every step,
            # memory a step leaves behind shows in the peaks of the steps after it.
            peak = self.peaks.setdefault(self.phase, {"largest_process": 0, "tree": 0, "start": max(sizes, default=0)})
            peak["largest_process"] = max(peak["largest_process"], max(sizes, default=0))
            peak["tree"] = max(peak["tree"], sum(sizes))
            self.done.wait(SAMPLE_SECONDS)


def synth(rows: int, out: Path, seed: int) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mlops.cli", "data", "synth", "--rows", str(rows), "--out", str(out),
                    "--seed", str(seed), "--sample", str(ROOT / "data/taxi/data.csv")], cwd=ROOT, check=True,
                   env=_env(), stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def _env() -> dict[str, str]:
    # Unbuffered: the progress lines must arrive when printed, they mark the step boundaries.
    return dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")


def run_size(rows: int, work: Path, train_steps: int, seed: int, beam_args: Sequence[str] | None = None) -> dict:
    csv_path = work / f"taxi-{rows}.csv"
    synth_seconds = synth(rows, csv_path, seed)
    root = work / f"run-{rows}"
    root.mkdir()
    # The TOML sits before [data]: a table header there would swallow the keys after it.
    beam = beam_config(beam_args)
    (root / "mlops.toml").write_text(_CONFIG.format(schema=ROOT / "data/taxi/schema.pbtxt", steps=train_steps, beam=beam,
                                                     own_processes=own_processes_config()))
    started = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-m", "mlops.cli", "--config", str(root / "mlops.toml"), "pipeline", "run", "--csv",
         str(csv_path), "--start", WINDOW[0], "--end", WINDOW[1], "--json"],
        cwd=root, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    sampler = TreeSampler(child.pid)
    sampler.start()
    stderr_tail: list[str] = []
    threading.Thread(target=lambda: stderr_tail.extend(child.stderr), daemon=True).start()
    output: list[str] = []
    for line in child.stdout:
        output.append(line)
        match = STEP_LINE.match(line)
        if match:
            sampler.phase = match.group(3)
        print(f"  {rows:>9} | {line.rstrip()}", file=sys.stderr, flush=True)
    code = child.wait()
    wall = time.perf_counter() - started
    sampler.done.set()
    sampler.join()
    if code != 0:
        raise SystemExit(f"pipeline at {rows} rows failed ({code}):\n{''.join(stderr_tail)[-3000:]}")
    outcome = json.loads("".join(output)["".join(output).index("\n{") + 1:])
    steps = {}
    in_order = [name for name in sampler.peaks if name in outcome["steps"]]  # the order the steps ran in
    for name in in_order + sorted(set(outcome["steps"]) - set(in_order)):
        step = outcome["steps"][name]
        peak = sampler.peaks.get(name, {"largest_process": 0, "tree": 0, "start": 0})
        steps[name] = {"seconds": step["seconds"], "rows_per_second": rows / step["seconds"] if step["seconds"] else None,
                       "rss_at_start": peak["start"], "peak_rss_largest_process": peak["largest_process"],
                       "peak_rss_tree": peak["tree"],
                       # What the step's Beam job ran with and why (mlops/steps.py; None for non-Beam steps).
                       "beam_options": _json_value(step["results"].get("beam_options"))}
    return {
        "rows": rows, "wall_seconds": wall, "pipeline_seconds": outcome["seconds"], "synth_seconds": synth_seconds,
        "csv_bytes": csv_path.stat().st_size, "steps": steps,
        "peak_rss_largest_process": max(p["largest_process"] for p in sampler.peaks.values()),
        "peak_rss_tree": max(p["tree"] for p in sampler.peaks.values()),
        "metrics": outcome["steps"]["evaluate"]["results"].get("metrics"),
    }


def _json_value(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def growth(results: list[dict]) -> list[dict]:
    """Per step, between consecutive sizes: time ratio and that ratio over the row ratio (1.0 = linear)."""
    rows = []
    for small, large in zip(results, results[1:]):
        row_ratio = large["rows"] / small["rows"]
        for name, step in large["steps"].items():
            before = small["steps"][name]["seconds"]
            ratio = step["seconds"] / before if before else None
            rows.append({"step": name, "from_rows": small["rows"], "to_rows": large["rows"], "seconds_ratio": ratio,
                         "vs_linear": ratio / row_ratio if ratio else None,
                         "rss_ratio": step["peak_rss_largest_process"] / max(1, small["steps"][name]["peak_rss_largest_process"])})
    return rows


def _gib(value: int) -> str:
    return f"{value / 2**30:.2f}"


def table(results: list[dict], growths: list[dict]) -> str:
    lines = ["| rows | step | seconds | rows/s | RSS at start (GiB) | peak RSS largest process (GiB) | peak RSS tree (GiB) "
             "| Beam options |", "|---|---|---|---|---|---|---|---|"]
    for result in results:
        for name, step in result["steps"].items():
            beam = (step.get("beam_options") or {}).get("why", "")
            lines.append(f"| {result['rows']:,} | {name} | {step['seconds']:.1f} | {step['rows_per_second'] or 0:,.0f} | "
                         f"{_gib(step['rss_at_start'])} | {_gib(step['peak_rss_largest_process'])} | {_gib(step['peak_rss_tree'])} "
                         f"| {beam} |")
        lines.append(f"| {result['rows']:,} | **whole run** (wall) | {result['wall_seconds']:.1f} | "
                     f"{result['rows'] / result['wall_seconds']:,.0f} | | {_gib(result['peak_rss_largest_process'])} | "
                     f"{_gib(result['peak_rss_tree'])} | |")
    if growths:
        lines += ["", "| step | rows | seconds x | x over linear | peak RSS x |", "|---|---|---|---|---|"]
        for g in growths:
            lines.append(f"| {g['step']} | {g['from_rows']:,} -> {g['to_rows']:,} | {g['seconds_ratio']:.2f} | "
                         f"{g['vs_linear']:.3f} | {g['rss_ratio']:.2f} |")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> Path:
    """Two log-log panels (wall seconds, peak RSS of the largest process) vs rows, this project beside
    TFX; the format follows the suffix (.svg, .png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    ours = [r["rows"] for r in results]
    figure, (seconds, memory) = plt.subplots(1, 2, figsize=(9, 3.6))
    for axes, mine, theirs, title in (
        (seconds, [r["wall_seconds"] for r in results], [v[0] for v in TFX.values()], "wall seconds"),
        (memory, [r["peak_rss_largest_process"] / 2**30 for r in results], [v[1] for v in TFX.values()],
         "peak RSS, largest process (GiB)"),
    ):
        axes.plot(ours, mine, "o-", label="this project")
        axes.plot(list(TFX), theirs, "s--", label="TFX 1.16 (same machine and rows)")
        axes.set(xscale="log", yscale="log", xlabel="rows", title=title)
        axes.grid(True, which="both", alpha=0.3)
        axes.yaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1, 2, 3, 5)))
        axes.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        axes.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    seconds.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    matplotlib.rcParams["svg.hashsalt"] = "pipeline_scale"  # no random ids or date: same numbers, same file
    figure.savefig(path, metadata={"Date": None} if path.suffix == ".svg" else None)
    plt.close(figure)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="15000,150000,1500000", help="comma-separated row counts (15000000 as an option)")
    parser.add_argument("--train-steps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "docs/scale", help="where the JSON and the SVG go")
    parser.add_argument("--work", type=Path, help="where CSVs and pipeline roots go, kept (default: a temporary folder, removed)")
    parser.add_argument("--previous", type=Path, help="a JSON this program wrote: its sizes join the table and the plot "
                                                     "(to add one large size without re-running the small ones)")
    parser.add_argument("--beam-args", help="Beam options for every step, e.g. \"--runner=DirectRunner "
                                            "--direct_num_workers=2 --direct_running_mode=multi_processing\" "
                                            "(default: the project's mlops.toml: its beam_args or its table by input size)")
    args = parser.parse_args(argv)
    beam_args = shlex.split(args.beam_args) if args.beam_args is not None else None
    sizes = [int(size) for size in args.sizes.split(",")]
    earlier = json.loads(args.previous.read_text())["sizes"] if args.previous else []
    if args.work:
        args.work.mkdir(parents=True, exist_ok=True)
        results = [run_size(rows, args.work, args.train_steps, args.seed, beam_args) for rows in sizes]
    else:
        with tempfile.TemporaryDirectory(prefix="mlops-scale-") as work:
            results = [run_size(rows, Path(work), args.train_steps, args.seed, beam_args) for rows in sizes]
    results = sorted([r for r in earlier if r["rows"] not in sizes] + results, key=lambda r: r["rows"])
    growths = growth(results)
    print(table(results, growths))
    args.out.mkdir(parents=True, exist_ok=True)
    from core.atomic import write_json

    write_json(args.out / "pipeline_scale.json", {"sizes": results, "growth": growths, "tfx": {str(k): v for k, v in TFX.items()},
                                                  "train_steps": args.train_steps, "cpus": os.cpu_count(),
                                                  # None: the project's default choice (per step in "steps").
                                                  "beam_args": beam_args}, )
    plot(results, args.out / "pipeline_scale.svg")
    print(f"wrote {args.out / 'pipeline_scale.json'} and {args.out / 'pipeline_scale.svg'}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
