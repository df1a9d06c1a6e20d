"""The shared output transforms, on the real DirectRunner."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

from beam_jobs.batch_predict import SummarizeScoringFn
from beam_jobs.outputs import SummarizeBranches
from tests.beam_jobs._helpers import BEAM_ARGS


def test_branches_summarized_apart_give_the_summary_of_all_facts_at_once():
    branches = [
        [("read", 300), ("read", 200)],
        [("scored", 1, 0.9), ("scored", 0, 0.2), ("scored", 1, None)],
        [("rejected", "unparseable_value", 12, "fare='x'"), ("rejected", "wrong_field_count", 7, "3 fields")],
        [],  # a branch without facts adds nothing
    ]
    combine = SummarizeScoringFn()
    expected = combine.create_accumulator()
    for fact in [fact for facts in branches for fact in facts]:
        expected = combine.add_input(expected, fact)
    assert (expected["read"], expected["scored"], expected["positives"], expected["probabilities"]) == (500, 3, 2, 2)
    assert expected["reasons"] == {"unparseable_value": 1, "wrong_field_count": 1}
    assert [line for line, _ in expected["examples"]] == [7, 12]

    with beam.Pipeline(options=PipelineOptions(list(BEAM_ARGS))) as pipeline:
        created = tuple(pipeline | f"Create[{index}]" >> beam.Create(facts, reshuffle=False)
                        for index, facts in enumerate(branches))
        assert_that(created | SummarizeBranches(SummarizeScoringFn()), equal_to([expected]))
