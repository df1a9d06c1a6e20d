"""How long the scheduler's DAG processor takes to parse each DAG file (it re-parses them all the time).

    .venvs/airflow/bin/python benchmarks/dag_parse_benchmark.py [--repeat 5]

Each file is parsed in a fresh interpreter (as the DAG processor's parsing subprocess does), once
to warm the disk cache and then `--repeat` times; the script prints, per file, the median and
worst time of the parse itself (the file's own imports included, Airflow's import excluded since
the processor has it loaded already) and, for context, the interpreter's time to import Airflow.
Aim: well under a second per file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

DAGS_FOLDER = Path(__file__).resolve().parent.parent / "dags"

_PARSE = """
import json, sys, time
started = time.perf_counter()
import airflow.sdk  # what the DAG processor has loaded before it parses a file
from airflow.dag_processing.dagbag import DagBag
airflow_seconds = time.perf_counter() - started
started = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1])
parse_seconds = time.perf_counter() - started
print(json.dumps({"airflow": airflow_seconds, "parse": parse_seconds, "errors": bag.import_errors,
                  "dags": sorted(bag.dags)}))
"""


def parse_once(path: Path) -> dict:
    result = subprocess.run([sys.executable, "-c", _PARSE, str(path)], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed parses per file (default 5)")
    args = parser.parse_args()
    files = sorted(p for p in DAGS_FOLDER.glob("*.py") if not p.name.startswith("_"))
    print(f"DAG parse time, {args.repeat} fresh-interpreter parses per file ({sys.executable})")
    print(f"{'file':<26} {'dags':<20} {'median s':>9} {'max s':>7} {'import airflow s':>17}")
    for path in files:
        parse_once(path)  # warm-up
        runs = [parse_once(path) for _ in range(args.repeat)]
        if runs[0]["errors"]:
            print(f"{path.name:<26} IMPORT ERRORS: {runs[0]['errors']}")
            continue
        parses = [run["parse"] for run in runs]
        imports = [run["airflow"] for run in runs]
        print(f"{path.name:<26} {','.join(runs[0]['dags']):<20} {statistics.median(parses):>9.3f} {max(parses):>7.3f} "
              f"{statistics.median(imports):>17.2f}")


if __name__ == "__main__":
    main()
