"""Each Beam step runs with the Beam options its input's size calls for, and records which and why.

Real Beam and MLMD through the step functions (ingest -> clean), on a CSV whose rows outside the
window make ingest's input larger than clean's.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import lzma

import pytest

from core.config import IN_MEMORY_ARGS, BeamConfig, BeamOptionsForRows
from core.errors import DataError
from metadata.recorder import properties_of
from mlops import steps
from mlops.step_context import sha256_and_lines
from tests.conftest import write_csv
from tests.mlops.test_pipeline import SMALL_WINDOW, small_config

THREADS = ("--runner=DirectRunner", "--direct_num_workers=2", "--direct_running_mode=multi_threading")
# Below 400 rows in memory, else two threads: the 500-row CSV and its 300 rows in the window fall either side.
TABLE = BeamConfig((BeamOptionsForRows(IN_MEMORY_ARGS, below=400), BeamOptionsForRows(THREADS)))


@pytest.mark.parametrize("content, lines", [(b"", 0), (b"a\n", 1), (b"a\nb", 2), (b"a\nb\n", 2), (b"\n\n\n", 3)])
def test_the_checksum_pass_counts_lines_too(tmp_path, content, lines):
    path = tmp_path / "f.csv"
    path.write_bytes(content)
    assert sha256_and_lines(path) == (hashlib.sha256(content).hexdigest(), lines)
    assert steps.file_sha256(path) == hashlib.sha256(content).hexdigest()


@pytest.mark.parametrize("suffix, compress", [(".gz", gzip.compress), (".bz2", bz2.compress), (".xz", lzma.compress)])
def test_a_compressed_csv_is_read_once_for_its_stored_checksum_and_the_lines_inside(tmp_path, suffix, compress):
    content = b"h\n" + b"".join(b"row %d\n" % i for i in range(100_000)) + b"last"
    stored = compress(content)
    path = tmp_path / f"f.csv{suffix}"
    path.write_bytes(stored)
    assert sha256_and_lines(path) == (hashlib.sha256(stored).hexdigest(), 100_002)
    assert steps.file_sha256(path) == hashlib.sha256(stored).hexdigest()
    path.write_bytes(stored[: len(stored) // 2])
    with pytest.raises(DataError, match=r"not a whole .* file"):
        sha256_and_lines(path)


def test_what_callers_import_from_mlops_steps_is_still_there_after_the_split():
    from mlops import step_context
    from mlops.steps import STEP_MODULES, STEP_NAMES, StepContext, StepOutcome, _utc, file_sha256, open_run, step_code

    assert StepContext is step_context.StepContext and StepOutcome is step_context.StepOutcome
    assert open_run is step_context.open_run and step_code is step_context.step_code
    assert file_sha256 is step_context.file_sha256 and STEP_MODULES is step_context.STEP_MODULES
    assert STEP_NAMES[0] == "ingest" and _utc("2013-01-01").tzinfo is not None
    # Both files drive the steps: a change to either re-runs them (the digest's second half).
    assert step_context.STEP_DRIVERS == ("mlops.steps", "mlops.step_context")


@pytest.mark.slow
def test_each_step_chooses_by_its_own_input_records_why_and_explicit_args_win(tmp_path, taxi_rows):
    inside = [r for r in taxi_rows if "1356998400" <= r["trip_start_timestamp"] < "1372636800"][:300]
    outside = [r for r in taxi_rows if r["trip_start_timestamp"] >= "1372636800"][:200]
    csv = write_csv(tmp_path / "taxi.csv", inside + outside)
    config = small_config(tmp_path).replace(beam_args=None, beam=TABLE)

    ctx = steps.open_run(config, "by-size")
    ingested = steps.ingest(ctx, csv, *SMALL_WINDOW, production_data=False)
    cleaned = steps.clean(ctx, ingested.outputs["examples"])

    # Ingest by the CSV's rows (500), clean by what ingest recorded (the 300 in the window).
    assert ingested.outputs["examples"].properties["rows"] == 300
    assert ingested.results["beam_options"] == {"args": list(THREADS), "why": "500 rows >= 400: multi_threading x2"}
    assert cleaned.results["beam_options"] == {"args": list(IN_MEMORY_ARGS), "why": "300 rows < 400: in_memory x1"}
    assert ingested.summary.endswith("[Beam: 500 rows >= 400: multi_threading x2]")
    assert cleaned.summary.endswith("[Beam: 300 rows < 400: in_memory x1]")
    [execution] = ctx.run.store.get_executions_by_id([ingested.execution_id])
    recorded = properties_of(execution)
    assert recorded["result_beam_options"]["args"] == list(THREADS)
    # Options change how a job runs, not what it writes: they are no parameter, so no cache key.
    assert "direct_running_mode" not in json.dumps(recorded["parameters"])

    # Explicit beam_args, other run: the same inputs reuse the outputs (and say what made them) ...
    explicit = config.replace(beam_args=IN_MEMORY_ARGS)
    again = steps.open_run(explicit, "explicit")
    reused = steps.ingest(again, csv, *SMALL_WINDOW, production_data=False)
    assert reused.cached and reused.summary.endswith("[Beam: 500 rows >= 400: multi_threading x2]")
    # ... and new work runs with them, whatever the size.
    other_window = steps.ingest(again, csv, SMALL_WINDOW[0], "2013-06-01", production_data=False)
    assert not other_window.cached
    assert other_window.results["beam_options"] == {"args": list(IN_MEMORY_ARGS),
                                                     "why": "beam_args set explicitly: in_memory x1"}


def test_the_scale_benchmark_runs_the_projects_choice_unless_given_beam_args(tmp_path):
    import tomllib

    from benchmarks.pipeline_scale import _CONFIG, beam_config, own_processes_config
    from core.config import config_from_dict, load_config
    from tests.conftest import PROJECT_ROOT

    def generated(beam_args):
        text = _CONFIG.format(schema=PROJECT_ROOT / "data/taxi/schema.pbtxt", steps=5, beam=beam_config(beam_args),
                              own_processes=own_processes_config())
        return config_from_dict(tomllib.loads(text), tmp_path)

    project = load_config(PROJECT_ROOT / "mlops.toml")
    default = generated(None)
    assert default.beam_args == project.beam_args and default.beam == project.beam
    assert default.steps_in_own_process_from_rows == project.steps_in_own_process_from_rows
    assert default.transform_beside_validation_from_rows == project.transform_beside_validation_from_rows
    assert default.training.train_steps == 5  # the table before [data] swallowed none of the keys after it
    given = generated(["--runner=DirectRunner", "--direct_num_workers=2", "--direct_running_mode=multi_processing"])
    assert given.beam_options(10).why == "beam_args set explicitly: multi_processing x2"
