"""A rollout task's OpenLineage run, from its first moment to its end.

A rollout decides first (minutes of observed canary traffic, or a person's answer) and records its
`Deploy` execution in ML Metadata after; its OpenLineage START must still go out when it begins,
and a rollout that fails before recording must still end with FAIL. `emits_rollout_lineage`
wraps a rollout task (`run_rollout_task`, `run_approval_outcome_task`) for that: START on entry
(`StepEvents.announced`), then the Deploy's COMPLETE/FAIL under the same run id, with the pushed
version in, the version served afterwards out (named by the gateway's URL) and the judged evidence
and approval (metadata/openlineage_ml.py); FAIL with the error if the task ends before that.

Module level imports are stdlib only (the DAG tests import the rollout tasks in the Airflow environment).
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable, Mapping, TypeVar

log = logging.getLogger(__name__)

Task = TypeVar("Task", bound=Callable[..., Any])


def _announcement(action: str, config_path: str, dag_id: str, airflow_run_id: str,
                  params_json: str | Mapping[str, Any]) -> Any:
    """The context manager sending the task's START and (on an early error) FAIL."""
    from metadata.openlineage import step_events
    from metadata.openlineage_facets import PRODUCER, MlopsRolloutRunFacet
    from metadata.store import describe
    from mlops.airflow.tasks import load_task_config, pipeline_run_id, task_params
    from serving.rollout import gateway_url

    config, params = load_task_config(config_path), task_params(params_json)
    events = step_events(config.pipeline_root, config.pipeline_name)
    return events.announced("Deploy", describe(config.metadata), pipeline_run_id(dag_id, airflow_run_id),
                            facets={"mlops_rollout": MlopsRolloutRunFacet(action=action, decision=None, producer=PRODUCER)},
                            served_namespace=gateway_url(params.get("gateway_url")))


def emits_rollout_lineage(task: Task) -> Task:
    """Wraps a rollout task `task(action, *, config_path, dag_id, airflow_run_id, params_json, ...)`."""

    @functools.wraps(task)
    def wrapper(action: str, **kwargs: Any) -> Any:
        try:
            announced = _announcement(action, kwargs["config_path"], kwargs["dag_id"], kwargs["airflow_run_id"],
                                      kwargs["params_json"])
        except Exception as err:  # noqa: BLE001 - bad input is the task's to report, in its own words and exit code
            log.warning("no OpenLineage events for %s: %s", action, err)
            return task(action, **kwargs)
        with announced:
            return task(action, **kwargs)

    return wrapper  # type: ignore[return-value]
