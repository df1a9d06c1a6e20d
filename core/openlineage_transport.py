"""Where OpenLineage events go when nobody said: one definition for our ML steps' events
(metadata/openlineage.py) and Airflow's own task events (the OpenLineage provider, configured by
mlops/airflow/launcher.py), so by default both land in the same file and a reader joins them there.

OpenLineage's own configuration wins for both when there is one (`OPENLINEAGE_URL`,
`OPENLINEAGE_CONFIG`, `./openlineage.yml`, `~/.openlineage/openlineage.yml`,
`OPENLINEAGE__TRANSPORT__*`, `OPENLINEAGE_DISABLED`): the provider reads the same variables.
Otherwise the default is a file transport appending one JSON event per line to
`<pipeline_root>/openlineage/events.jsonl`. Stdlib only: the launcher runs from any python.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

NAMESPACE = "mlops-suite"  # the job namespace of our events and, when started by the launcher, of Airflow's
DEFAULT_EVENTS_FILE = Path("openlineage") / "events.jsonl"  # below the pipeline root


def user_configured(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether OpenLineage's own configuration says where events go (see the module docstring)."""
    if any(environ.get(name) for name in ("OPENLINEAGE_URL", "OPENLINEAGE_CONFIG", "OPENLINEAGE_DISABLED")):
        return True
    if any(name.startswith("OPENLINEAGE__TRANSPORT") and value for name, value in environ.items()):
        return True
    return Path("openlineage.yml").is_file() or (Path.home() / ".openlineage" / "openlineage.yml").is_file()


def default_transport(pipeline_root: Path) -> dict[str, Any]:
    """The file transport's configuration, as openlineage-python's `OpenLineageClient(config=...)` and the
    provider's `[openlineage] transport` take it."""
    return {"type": "file", "log_file_path": str(Path(pipeline_root).resolve() / DEFAULT_EVENTS_FILE), "append": True}
