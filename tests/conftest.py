"""Shared test set-up: quiet TensorFlow, legacy Keras, and the shipped taxi data."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import csv  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TAXI_CSV = PROJECT_ROOT / "data" / "taxi" / "data.csv"


@pytest.fixture(scope="session")
def taxi_rows() -> list[dict[str, str]]:
    """All rows of the shipped taxi CSV, as strings, in file order."""
    with TAXI_CSV.open(newline="") as handle:
        return list(csv.DictReader(handle))


def write_csv(path: Path, rows: list[dict[str, str]], columns: list[str] | None = None) -> Path:
    columns = columns or list(rows[0])
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="session")
def postgres_metadata():
    """MLMD settings for a real PostgreSQL server started for this test session."""
    from tests.fixtures.postgres import postgres_bin_dir, running_postgres

    if postgres_bin_dir() is None:
        pytest.skip("PostgreSQL server binaries are missing: `make test` installs Debian's postgresql")
    with running_postgres() as config:
        yield config


@pytest.fixture(scope="session")
def mysql_metadata():
    """MLMD settings for a real MySQL server (Debian's MariaDB) started for this test session."""
    from tests.fixtures.mysql import mysql_binaries_present, running_mysql

    if not mysql_binaries_present():
        pytest.skip("MariaDB server binaries are missing: `make test` installs Debian's mariadb-server")
    with running_mysql() as config:
        yield config


@pytest.fixture
def sqlite_metadata(tmp_path):
    from core.config import MetadataConfig

    return MetadataConfig(backend="sqlite", sqlite_path=tmp_path / "mlmd" / "metadata.sqlite")
