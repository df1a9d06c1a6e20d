"""The ML Metadata database restarted (crashed and brought back) in the middle of a pipeline step.

Real steps (mlops.steps.ingest and clean: Beam on a small CSV) record into a real PostgreSQL that
is stopped with `pg_ctl -m immediate` (every connection cut, as a crash) while `clean` runs, and
started again. Then the run is retried as Airflow would retry the task: a new process-level
connection, the same run id. Shared by tests/faults/test_metadata_restart.py and
benchmarks/fault_table.py.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Any

from tests.faults.scenarios import FaultRow
from tests.fixtures.polling import poll_until


@dataclasses.dataclass
class MetadataRestart:
    first_error: str  # what the step raised when the database went away ("" if it went through)
    down_s: float
    executions: list[dict[str, Any]]  # every execution after the retry: type, state, outputs, run_id
    retry_cached: dict[str, bool]  # step -> reused on the retry
    retry_error: str

    @property
    def complete_without_outputs(self) -> list[dict[str, Any]]:
        return [e for e in self.executions if e["state"] == "COMPLETE" and not e["outputs"]]

    def row(self) -> FaultRow:
        states = ", ".join(f"{e['type']} {e['state']}" for e in self.executions)
        return FaultRow(
            "MLMD PostgreSQL crash + restart in a pipeline step", f"during clean (down {self.down_s:.1f} s)",
            len(self.executions), sum(1 for e in self.executions if e["state"] in ("COMPLETE", "CACHED")), None, None, None,
            f"the step raised {self.first_error.split(':')[0] or 'nothing'}; the retry reused "
            f"{[k for k, v in self.retry_cached.items() if v]} and redid {[k for k, v in self.retry_cached.items() if not v]}; "
            f"executions: {states}")


def metadata_restart(work: Path, config_for: Any) -> MetadataRestart:
    """`config_for(metadata_config)` gives the pipeline Config (tests.mlops.test_pipeline.small_config
    with this PostgreSQL); the CSV is the first in-window rows of the shipped data."""
    from metadata.store import connect
    from mlops import steps
    from tests.conftest import write_csv
    from tests.fixtures.postgres import running_postgres, start_postgres, stop_postgres
    from tests.mlops.test_bad_rows import in_window
    from tests.mlops.test_pipeline import SMALL_WINDOW
    from tests.serving.gateway.helpers import TAXI_CSV
    import csv

    with TAXI_CSV.open(newline="") as handle:
        rows = in_window(list(csv.DictReader(handle)))
    data = write_csv(work / "trips.csv", rows)
    with running_postgres(database="faults") as metadata:
        config = config_for(metadata)
        ctx = steps.open_run(config, "faults-run")
        ingested = steps.ingest(ctx, data, *SMALL_WINDOW)
        watcher = connect(metadata)
        crashed = threading.Event()
        down = {}

        def crash_during_clean() -> None:
            poll_until(lambda: any(e.last_known_state == e.RUNNING for e in watcher.get_executions_by_type("Clean")),
                       "clean running", timeout=300, interval=0.02)
            stopped = time.monotonic()
            stop_postgres(metadata)
            crashed.set()
            time.sleep(1.0)  # a database that is really away for a moment, not a blip
            start_postgres(metadata)
            down["s"] = time.monotonic() - stopped

        crasher = threading.Thread(target=crash_during_clean)
        crasher.start()
        first_error = ""
        try:
            steps.clean(ctx, ingested.outputs["examples"])
        except Exception as err:  # noqa: BLE001 - what the step raised is the finding
            first_error = f"{type(err).__name__}: {err}"
        crasher.join(300)
        assert crashed.is_set(), "the database was never stopped during clean"

        retry_error, cached = "", {}
        try:  # the Airflow retry: a new process, so a new connection; the same run
            again = steps.open_run(config, "faults-run")
            redo = steps.ingest(again, data, *SMALL_WINDOW)
            cached["ingest"] = redo.cached
            cached["clean"] = steps.clean(again, redo.outputs["examples"]).cached
        except Exception as err:  # noqa: BLE001
            retry_error = f"{type(err).__name__}: {err}"
        return MetadataRestart(first_error, down.get("s", 0.0), _executions(connect(metadata)), cached, retry_error)


def _executions(store: Any) -> list[dict[str, Any]]:
    from metadata.recorder import properties_of

    types = {t.id: t.name for t in store.get_execution_types()}
    outputs: dict[int, int] = {}
    for event in store.get_events_by_execution_ids([e.id for e in store.get_executions()]):
        if event.type == event.OUTPUT:
            outputs[event.execution_id] = outputs.get(event.execution_id, 0) + 1
    return [{"id": e.id, "type": types[e.type_id], "state": e.State.Name(e.last_known_state),
             "outputs": outputs.get(e.id, 0), "error": properties_of(e).get("error", "")}
            for e in sorted(store.get_executions(), key=lambda e: e.id)]
