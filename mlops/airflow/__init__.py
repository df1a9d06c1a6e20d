"""Airflow for this project, one module per audience.

- `launcher`: starts and stops this checkout's Airflow (`python -m mlops.airflow standalone |
  start | stop | status`) with the environment every Airflow process gets.
- `rest_client`: Airflow's REST API from a terminal (`python -m mlops.airflow trigger DAG --wait`):
  trigger a run, follow it task by task, print a failing task's log tail.
- `tasks`: what the DAGs' tasks run in the ML runtime (`run_training_task`, `run_monitoring_task`,
  `run_batch_predict_task`), their exit codes and Param defaults.
- `rollout_tasks`: taxi_rollout's tasks (`run_rollout_task`; `run_approval_outcome_task` does what
  the person asked by its ApprovalOperator answered).
- `hitl_client`: answers Airflow's human-in-the-loop required actions over the REST API v2.

Nothing is re-exported here: import the module you need. Every module imports only the stdlib
(and `core`) at module level, so the launcher starts instantly and the DAG tests can import them
in the Airflow environment.
"""
