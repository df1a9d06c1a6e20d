"""`makerun` tests run the whole `make run` (about 15 minutes, the fixed gateway port 8000): they are
left out unless chosen by name, `pytest -m makerun tests/faults` (the nightly run)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "makerun: runs `make run` in a clone of this checkout (nightly: pytest -m makerun)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "makerun" in (config.option.markexpr or ""):
        return
    chosen = [item for item in items if item.get_closest_marker("makerun") is None]
    if len(chosen) != len(items):
        config.hook.pytest_deselected(items=[item for item in items if item not in chosen])
        items[:] = chosen
