"""The ML Metadata PostgreSQL crashes and comes back in the middle of a pipeline step (`clean`, real
Beam): the step fails with an error naming the metadata database, no execution is left COMPLETE
without its outputs, and the retry of the run (as Airflow retries the task) reuses the step that
had completed (ingest), redoes the interrupted one and records the dead attempt as FAILED
("abandoned"), so nothing is left RUNNING. The database password appears in no error, log or file."""

from __future__ import annotations

import dataclasses

import pytest

from tests.faults.metadata_scenarios import metadata_restart
from tests.fixtures.postgres import postgres_bin_dir
from tests.mlops.test_pipeline import small_config


@pytest.mark.slow
def test_a_metadata_database_restart_mid_step_leaves_no_false_complete_and_the_retry_reuses(tmp_path, capfd):
    if postgres_bin_dir() is None:
        pytest.skip("PostgreSQL server binaries are missing: `make test` installs Debian's postgresql")
    passwords = []

    def config_for(metadata):
        passwords.append(metadata.password)
        return dataclasses.replace(small_config(tmp_path), metadata=metadata)

    outcome = metadata_restart(tmp_path, config_for)

    assert "MetadataRecordingError" in outcome.first_error or "PostgreSQL" in outcome.first_error, outcome.first_error
    assert outcome.retry_error == "", outcome.retry_error
    assert outcome.retry_cached == {"ingest": True, "clean": False}, outcome.retry_cached
    assert not outcome.complete_without_outputs, outcome.executions
    states = [(e["type"], e["state"]) for e in outcome.executions]
    assert states == [("Ingest", "COMPLETE"), ("Clean", "FAILED"), ("Ingest", "CACHED"), ("Clean", "COMPLETE")], states
    assert outcome.executions[1]["error"].startswith("abandoned"), outcome.executions[1]
    # The database password, through connection errors: not in what the step raised, in what was
    # recorded, printed or logged (MLMD's C++ client included: capfd reads the file descriptors),
    # nor in any file the pipeline wrote.
    [password] = passwords
    assert password not in outcome.first_error and password not in str(outcome.executions)
    captured = capfd.readouterr()
    assert password not in captured.out and password not in captured.err
    for path in (p for p in tmp_path.rglob("*") if p.is_file()):
        assert password.encode() not in path.read_bytes(), f"the database password is in {path}"
    print(f"\n{outcome.row()}")
