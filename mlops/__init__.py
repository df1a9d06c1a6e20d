"""The orchestration layer, on top of every other package; only programs (dags/, tests/,
benchmarks/, `__main__` modules) import it (tests/test_layers.py).

- `steps.py`: each pipeline step = its package's plain function + ML Metadata recording + reuse.
- `pipeline.py`: the steps in order, in one process (`mlops pipeline run`).
- `cli.py`: the `mlops` command.
- `airflow/`: Airflow's launcher, its REST client, and what the DAG tasks run in the ML runtime.
- `loop.py`: `make run`, the whole loop through Airflow's scheduler.
- `retraining.py`: whether a failed drift check should start a retraining (not when nothing new would go in).
- `doctor.py`: `mlops doctor`, what a first run needs and what to do about each miss.
"""
