"""The Airflow task run our OpenLineage events hang under, so a lineage service joins Airflow's task
events and ours.

Airflow reports its own lineage through `apache-airflow-providers-openlineage`: one OpenLineage run
per task instance, job `<dag_id>.<task_id>` in the namespace `[openlineage] namespace`
(`AIRFLOW__OPENLINEAGE__NAMESPACE`, else `$OPENLINEAGE_NAMESPACE`, else `default`), run id
`generate_static_uuid(instant=logical date or run_after, data="<namespace>.<dag_id>.<task_id>.<try>.<map_index>")`
(the provider's `OpenLineageAdapter.build_task_instance_run_id` and its `lineage_run_id` macro).
The provider runs in the Airflow environment (requirements/airflow.lock), not in the ML runtime where
our steps run, so these ids are derived here the same documented way; its task events and ours name
the same run (tests/dags/test_openlineage_parent.py checks it against the provider's own events).

A step learns which task runs it from the variables Airflow exports to every task's environment
before it executes (`AIRFLOW_CTX_DAG_ID`, `_TASK_ID`, `_TRY_NUMBER`, `_LOGICAL_DATE`,
`_DAG_RUN_ID`); `@task.external_python` hands them to the ML runtime with the rest of the
environment. A run without a logical date (Airflow 3's manual and asset-triggered runs) uses
`run_after`, which Airflow writes into the run ids it generates (`<run_type>__<run_after>_<random>`);
a run id chosen by hand carries none, and then no parent is claimed rather than a wrong one.
Our tasks are not mapped: map index -1.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
from typing import Mapping

from openlineage.client.uuid import generate_static_uuid

DEFAULT_NAMESPACE = "default"  # the provider's default for [openlineage] namespace
UNMAPPED = -1
# Airflow's generated run ids: DagRunType.generate_run_id(suffix=run_after.isoformat()[ + "_" + random]).
_GENERATED_RUN_ID = re.compile(r"^[a-z_]+__(?P<run_after>\d{4}-\d{2}-\d{2}T[0-9:.]+(?:[+-]\d{2}:\d{2}|Z)?)(?:_[A-Za-z0-9]+)?$")


@dataclasses.dataclass(frozen=True)
class AirflowTaskRun:
    """The Airflow task instance a step runs in, as the OpenLineage provider names it."""

    namespace: str
    dag_id: str
    task_id: str
    try_number: int
    date: dt.datetime  # the run's logical date, or its run_after when it has none
    map_index: int = UNMAPPED

    @property
    def job_name(self) -> str:
        return f"{self.dag_id}.{self.task_id}"

    @property
    def run_id(self) -> str:
        data = f"{self.namespace}.{self.dag_id}.{self.task_id}.{self.try_number}.{self.map_index}".encode()
        return str(generate_static_uuid(instant=self.date, data=data))


def openlineage_namespace(environ: Mapping[str, str] = os.environ) -> str:
    """The provider's `conf.namespace()`: [openlineage] namespace, else $OPENLINEAGE_NAMESPACE, else `default`."""
    return environ.get("AIRFLOW__OPENLINEAGE__NAMESPACE") or environ.get("OPENLINEAGE_NAMESPACE") or DEFAULT_NAMESPACE


def _parse_time(text: str) -> dt.datetime | None:
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def run_date(logical_date: str | None, dag_run_id: str | None) -> dt.datetime | None:
    """The instant the provider derives ids from: the logical date, else run_after read from a generated run id."""
    if logical_date:
        return _parse_time(logical_date)
    match = _GENERATED_RUN_ID.match(dag_run_id or "")
    return _parse_time(match["run_after"]) if match else None


def current_task_run(environ: Mapping[str, str] = os.environ) -> AirflowTaskRun | None:
    """The Airflow task instance this process runs for, from Airflow's AIRFLOW_CTX_* variables; None outside Airflow
    (or when the run's date cannot be known, see the module docstring)."""
    dag_id, task_id = environ.get("AIRFLOW_CTX_DAG_ID"), environ.get("AIRFLOW_CTX_TASK_ID")
    try_number = environ.get("AIRFLOW_CTX_TRY_NUMBER", "")
    if not (dag_id and task_id and try_number.isdigit()):
        return None
    date = run_date(environ.get("AIRFLOW_CTX_LOGICAL_DATE"), environ.get("AIRFLOW_CTX_DAG_RUN_ID"))
    if date is None:
        return None
    return AirflowTaskRun(openlineage_namespace(environ), dag_id, task_id, int(try_number), date)
