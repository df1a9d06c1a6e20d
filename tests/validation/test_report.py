"""The HTML statistics report: one self-contained page, a section per feature."""

from __future__ import annotations

import base64
import re
from pathlib import Path

from tensorflow_metadata.proto.v0 import statistics_pb2

from tests.validation.helpers import CHECKED_IN_SCHEMA
from transforms.features import EXAMPLE_FEATURES, RAW_COLUMNS
from validation.report import render_statistics_html
from validation.validate import load_anomalies, validate_statistics


def test_the_report_is_self_contained_with_one_section_per_feature(broken_statistics: Path, tmp_path: Path) -> None:
    result = validate_statistics(broken_statistics, CHECKED_IN_SCHEMA, tmp_path / "anomalies",
                                 splits=("latitude_zero",))
    anomalies = load_anomalies(result.anomalies_path / "Split-latitude_zero" / "SchemaDiff.pb")

    output = render_statistics_html(broken_statistics / "Split-latitude_zero" / "FeatureStats.pb",
                                    tmp_path / "report" / "statistics.html", CHECKED_IN_SCHEMA, anomalies)

    page = output.read_text()
    # Self-contained: nothing fetched from anywhere, no scripts needed.
    assert "<script" not in page and "<link" not in page
    assert not re.search(r"""(src|href)=["'](?!data:)""", page)
    # every feature of the schema: the CSV's columns, then the label production rows carry instead of tips
    assert re.findall(r'<section class="feature[^"]*" id="feature-([^"]+)"', page) == [f.name for f in EXAMPLE_FEATURES]
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) >= len(RAW_COLUMNS) - 1  # pickup_census_tract has no values to draw
    assert all(base64.b64decode(image).startswith(b"\x89PNG\r\n\x1a\n") for image in images)

    latitude = _section(page, "pickup_latitude")
    assert 'class="feature anomalous"' in latitude and "Out-of-range values" in latitude
    assert "schema: FLOAT, range [41, 43]" in latitude
    assert ">min</th><td class=\"num\">0</td>" in latitude
    assert "anomalous" not in _section(page, "fare")
    assert "No values in this dataset" in _section(page, "pickup_census_tract")
    assert ">#1 Cash</th>" in _section(page, "payment_type")


def test_values_from_the_data_are_escaped(tmp_path: Path) -> None:
    """Feature names and values come from untrusted data: they must not become markup."""
    statistics = statistics_pb2.DatasetFeatureStatisticsList()
    dataset = statistics.datasets.add(name="requests", num_examples=4)
    feature = dataset.features.add(type=statistics_pb2.FeatureNameStatistics.STRING)
    feature.path.step.append("company<script>")
    feature.string_stats.common_stats.num_non_missing = 3
    feature.string_stats.unique = 2
    feature.string_stats.top_values.add(value="<b>C & D</b>", frequency=2)
    feature.string_stats.top_values.add(value="Flash Cab", frequency=1)
    stats_path = tmp_path / "FeatureStats.pb"
    stats_path.write_bytes(statistics.SerializeToString())

    page = render_statistics_html(stats_path, tmp_path / "statistics.html").read_text()

    assert "<script>" not in page and "<b>" not in page
    assert 'id="feature-company&lt;script&gt;"' in page
    assert "#1 &lt;b&gt;C &amp; D&lt;/b&gt;" in page
    assert "not declared in transforms/features.py" in page
    assert "missing</th><td class=\"num\">25.0%" in page


def _section(page: str, feature: str) -> str:
    start = page.index(f'id="feature-{feature}"')
    return page[page.rindex("<section", 0, start):page.index("</section>", start)]
