"""All Beam programs can live in one process: Beam parses every imported job's flags together."""

import importlib

from apache_beam.options.pipeline_options import PipelineOptions

JOBS = ("beam_jobs.ingest", "beam_jobs.clean", "beam_jobs.statistics", "beam_jobs.batch_predict", "beam_jobs.transform")


def test_every_job_imported_together_still_parses_options():
    for name in JOBS:
        importlib.import_module(name)
    options = PipelineOptions(["--runner=DirectRunner", "--input=x", "--output=y"]).get_all_options()
    assert options["input"] == "x" and options["output"] == "y"
