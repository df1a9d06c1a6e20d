"""A user's own trips through the command line, as the README tells it: a config of one's own in a
folder of its own, CSVs with the taxi columns in other orders (one, then the folder of both, as
TFX's input_base), later years and a payment type the shipped schema does not know;
validation names it, `mlops schema infer` learns it, the run pushes, and the lineage command the
run prints answers from the same store."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT, write_csv
from tests.mlops.test_bad_rows import in_window

pytestmark = pytest.mark.slow

SIX_YEARS = 6 * 365 * 86_400
WINDOW = ["--start", "2018-12-01", "--end", "2019-07-01"]


def mlops(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(PROJECT_ROOT)}
    env.pop("MLOPS_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "mlops", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def own_trips(taxi_rows: list[dict[str, str]], folder: Path) -> tuple[Path, Path]:
    """Two shards of one's trips, each with its columns in an order of its own."""
    chosen = random.Random(5)
    rows = []
    for row in in_window(taxi_rows):
        row = dict(row, trip_start_timestamp=str(int(row["trip_start_timestamp"]) + SIX_YEARS), note="mine, \"quoted\"")
        if chosen.random() < 0.1:
            row["payment_type"] = "Mobile"
        rows.append(row)
    columns = sorted(rows[0], reverse=True)  # another order than the shipped file's, and an extra column
    half = len(rows) // 2
    return (write_csv(folder / "trips-1.csv", rows[:half], columns),
            write_csv(folder / "trips-2.csv", rows[half:], sorted(rows[0])))


def test_ones_own_trips_run_from_a_config_of_ones_own(tmp_path, taxi_rows):
    (tmp_path / "trips").mkdir()
    first, _ = own_trips(taxi_rows, tmp_path / "trips")
    trips = first.parent
    (tmp_path / "trips" / "README.md").write_text("exported from the city's portal\n")
    mine = tmp_path / "my"
    mine.mkdir()
    config = mine / "mlops.toml"
    settings = ('beam_args = ["--runner=DirectRunner", "--direct_num_workers=1", "--direct_running_mode=in_memory"]\n'
                '[training]\ntrain_steps = 150\n[evaluation]\nauc_floor = 0.5\n')
    config.write_text(settings + '[data]\ncsv_path = "../trips/trips-1.csv"\n')

    refused = mlops("--config", str(config), "pipeline", "run", *WINDOW, cwd=tmp_path)
    assert refused.returncode != 0
    # The shipped schema (the default, found although the config lies elsewhere) does not know the
    # payment type; the message says which, and how to go on.
    assert "payment_type" in refused.stderr and "Mobile" in refused.stderr, refused.stderr
    assert "mlops schema infer" in refused.stderr and "data.schema_path" in refused.stderr
    assert not (mine / "var" / "serving" / "models" / "taxi").exists()

    # The folder of both files (TFX's input_base) is read as one input.
    inferred = mlops("schema", "infer", "--csv", str(trips), *WINDOW, "--output", str(mine / "schema.pbtxt"), cwd=tmp_path)
    assert inferred.returncode == 0, inferred.stderr
    config.write_text(settings + '[data]\ncsv_path = "../trips"\nschema_path = "schema.pbtxt"\n')

    run = mlops("--config", str(config), "pipeline", "run", *WINDOW, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert f"{len(in_window(taxi_rows))} rows read" in run.stdout, run.stdout  # both files
    assert (mine / "var" / "serving" / "models" / "taxi" / "1" / "saved_model.pb").is_file()
    lineage_line = next(line for line in run.stdout.splitlines() if line.startswith("Lineage:"))
    command = lineage_line.split(None, 1)[1].split("   (")[0].split()
    assert command[:3] == ["mlops", "--config", str(config)], lineage_line
    lineage = mlops(*command[1:], cwd=tmp_path)
    assert lineage.returncode == 0, lineage.stderr
    assert str(trips) in lineage.stdout and str(mine / "schema.pbtxt") in lineage.stdout
