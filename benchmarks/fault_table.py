"""The fault table: every fault scenario of tests/faults/ run once, one row per fault.

    .venvs/ml/bin/python benchmarks/fault_table.py [--gateway-kill-rounds 10] [--soak-seconds 60] [--only NAME ...]

Each row says what was killed or broken and when, the requests sent / answered 200 / found in the
request log / answered but missing from it (lost), how long the system took to serve again
(recover, seconds), and what a user saw. The scenarios are the tests' own
(tests/faults/scenarios.py, tests/faults/metadata_scenarios.py): real processes, `kill -9`,
a real PostgreSQL crashed with `pg_ctl -m immediate`, Airflow's scheduler SIGKILLed with its process
group (tests/dags/test_scheduler_kill.py, run with the Airflow environment's pytest). For pipeline rows, "sent" is the step
executions recorded and "answered" those COMPLETE or reused. Recovery times are measured on
whatever machine runs this; on a shared 2-core machine they move by a second or more.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))


def _model_root(work: Path) -> Path:
    """Versions 1 (weight 1.0) and 2 (weight -1.0) of the tiny model, as the tests' model_root fixture."""
    from tests.fixtures.tiny_model import export_tiny_model
    from tests.serving.gateway.helpers import CANARY_VERSION, MODEL, STABLE_VERSION

    root = work / "model_base" / MODEL
    export_tiny_model(root / str(STABLE_VERSION), weight=1.0)
    export_tiny_model(root / str(CANARY_VERSION), weight=-1.0)
    return root


@contextlib.contextmanager
def _model_server(model_root: Path, work: Path) -> Iterator[Any]:
    """`python -m serving.model_server` serving versions 1 and 2, for the scenarios that bring their own gateway."""
    from tests.faults.processes import ModelServerProcess
    from tests.serving.gateway.helpers import CANARY_VERSION, STABLE_VERSION, write_model_config

    config = write_model_config(work / "server.config", model_root, served=[STABLE_VERSION, CANARY_VERSION],
                                stable=STABLE_VERSION, canary=CANARY_VERSION)
    server = ModelServerProcess(config, work / "model_server.stderr").start()
    try:
        server.wait_available([STABLE_VERSION, CANARY_VERSION])
        yield server
    finally:
        server.stop()


def _gateway_kill(model_root: Path, work: Path, rounds: int) -> list:
    from tests.faults.scenarios import gateway_kill

    with _model_server(model_root, work) as server:
        return [gateway_kill(server, model_root, work / "gateway", rounds=rounds).row()]


def _soak(model_root: Path, work: Path, seconds: float) -> list:
    from tests.faults.soak import soak

    with _model_server(model_root, work) as server:
        return [soak(server, model_root, work / "gateway", seconds=seconds).row()]


def _metadata_restart(work: Path) -> list:
    import dataclasses

    from tests.faults.metadata_scenarios import metadata_restart
    from tests.fixtures.postgres import postgres_bin_dir
    from tests.mlops.test_pipeline import small_config

    if postgres_bin_dir() is None:
        print("skipping metadata_restart: no PostgreSQL server binaries (apt-get install postgresql)", file=sys.stderr)
        return []
    return [metadata_restart(work, lambda metadata: dataclasses.replace(small_config(work), metadata=metadata)).row()]


def _scheduler_kill(work: Path) -> list:
    """tests/dags/test_scheduler_kill.py in the Airflow environment (Airflow is not importable here);
    its fixture writes the row to MLOPS_FAULT_ROW_FILE."""
    import json
    import subprocess

    from tests.faults.scenarios import FaultRow

    airflow_python = PROJECT_ROOT / ".venvs" / "airflow" / "bin" / "python"
    row_file = work / "row.json"
    run = subprocess.run([str(airflow_python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp", str(work / "pytest"),
                          "tests/dags/test_scheduler_kill.py"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                         env={**os.environ, "MLOPS_FAULT_ROW_FILE": str(row_file)})
    if not row_file.exists():
        print(f"scheduler_kill produced no row (pytest exit {run.returncode}):\n{run.stdout[-3000:]}", file=sys.stderr)
        return []
    return [FaultRow(**json.loads(row_file.read_text()))]


def scenarios(model_root: Path, rounds: int, soak_seconds: float) -> dict[str, Callable[[Path], list]]:
    from tests.faults import scenarios as s

    return {
        "gateway_kill": lambda work: _gateway_kill(model_root, work, rounds),
        "model_server_kill": lambda work: [s.model_server_kill(model_root, work).row()],
        "canary_kill": lambda work: [s.canary_kill(model_root, work / "load", traffic=True).row(),
                                     s.canary_kill(model_root, work / "idle", traffic=False).row()],
        "corrupt_version": lambda work: [o.row() for o in s.corrupt_versions(model_root, work)],
        "concurrent_push": lambda work: [s.concurrent_pushes(model_root, work, pushers=2, rounds=3).row()],
        "metadata_restart": _metadata_restart,
        "scheduler_kill": _scheduler_kill,
        "soak": lambda work: _soak(model_root, work, soak_seconds),
    }


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def print_table(rows: list) -> None:
    headers = ["fault", "when", "sent", "answered", "logged", "lost", "recover s"]
    cells = [[_cell(getattr(r, f)) for f in ("fault", "when", "sent", "answered", "logged", "lost", "recover_s")] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    print(" | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " | what the user saw")
    print("-|-".join("-" * w for w in widths) + "-|-" + "-" * 18)
    for row, cell in zip(rows, cells):
        print(" | ".join(c.ljust(w) for c, w in zip(cell, widths)) + " | " + row.user_saw)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gateway-kill-rounds", type=int, default=10)
    parser.add_argument("--soak-seconds", type=float, default=60.0, help="600 for the issue's 10-minute soak")
    parser.add_argument("--only", nargs="*", help="run only these scenarios (names: see the code's scenarios())")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fault-table-") as temp:
        work = Path(temp)
        model_root = _model_root(work)
        chosen = scenarios(model_root, args.gateway_kill_rounds, args.soak_seconds)
        unknown = sorted(set(args.only or []) - set(chosen))
        if unknown:
            parser.error(f"unknown scenarios {unknown}; known: {sorted(chosen)}")
        rows = []
        for name, run in chosen.items():
            if args.only and name not in args.only:
                continue
            started = time.monotonic()
            print(f"running {name} ...", file=sys.stderr, flush=True)
            (work / name).mkdir()
            rows.extend(run(work / name))
            print(f"  {name}: {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
        print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
