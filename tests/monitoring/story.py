"""One realistic history, built with the real pipeline, gateway logs and monitoring, for the monitoring and audit tests.

1. `train-1` (manual): the pipeline trains on 2013-01..2013-06 trips and pushes taxi:1.
2. Hour 1: 400 trips of the training period served by taxi:1 (each with a shadow copy by a
   candidate), all with ground truth from feedback. `monitor-1` checks it: all pass.
3. Hour 2: the 833 trips of 2016 served by taxi:1, 100 with ground truth. `monitor-2`: drift.
4. `retrain-2`, triggered by that drift check with the conf the monitoring DAG sends, trains
   again (more steps) and pushes taxi:2.
5. Hour 4: 96 training-period trips served by taxi:2.

Built once per process and metadata backend (it takes minutes): `story(backend, root)`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd

from core.config import Config, MetadataConfig, load_config
from metadata.recorder import Trigger
from tests.conftest import PROJECT_ROOT, TAXI_CSV
from tests.monitoring import logs

TRAINING_WINDOW = ("2013-01-01", "2013-07-01")
DAY = dt.datetime(2026, 11, 20, tzinfo=dt.timezone.utc)
HOUR_1 = (DAY, DAY + dt.timedelta(hours=1))
HOUR_2 = (DAY + dt.timedelta(hours=1), DAY + dt.timedelta(hours=2))
HOUR_4 = (DAY + dt.timedelta(hours=3), DAY + dt.timedelta(hours=4))
SHADOW_VERSION = 99


@dataclasses.dataclass
class Story:
    root: Path
    config: Config
    config_file: Path
    log_dir: Path
    first: object  # PipelineResult of train-1
    retrain: object  # PipelineResult of retrain-2
    undrifted: object  # MonitoringResult of hour 1
    drifted: object  # MonitoringResult of hour 2
    requests: dict[str, list[str]]  # hour -> request ids
    retrain_trigger: Trigger


def write_config(root: Path, metadata: MetadataConfig) -> Path:
    """A config file like tests/mlops/test_pipeline.py's small_config, on the given metadata backend."""
    if metadata.backend == "sqlite":
        metadata_toml = f'backend = "sqlite"\nsqlite_path = "{metadata.sqlite_path}"\n'
    else:
        metadata_toml = (f'backend = "{metadata.backend}"\nhost = "{metadata.host}"\nport = {metadata.port}\n'
                         f'user = "{metadata.user}"\npassword = "{metadata.password}"\ndatabase = "{metadata.database}"\n')
    text = f'''pipeline_name = "taxi"
pipeline_root = "pipeline"
beam_args = ["--runner=DirectRunner", "--direct_num_workers=1", "--direct_running_mode=in_memory"]

[data]
csv_path = "{TAXI_CSV}"
schema_path = "{PROJECT_ROOT / 'data/taxi/schema.pbtxt'}"

[training]
train_steps = 150

[evaluation]
auc_floor = 0.5
# The retraining in this story is judged by the AUC floor only: it is about lineage, not quality.
auc_tolerance = 1.0

[serving]
model_base_dir = "models"
model_config_file = "models.config"

[metadata]
{metadata_toml}'''
    path = root / "mlops.toml"
    path.write_text(text)
    return path


def training_period_trips(taxi: pd.DataFrame) -> pd.DataFrame:
    """The trips of the period taxi:1 was trained on."""
    timestamps = pd.to_datetime(taxi["trip_start_timestamp"].astype("int64"), unit="s")
    return taxi[(timestamps >= TRAINING_WINDOW[0]) & (timestamps < TRAINING_WINDOW[1])]


def build_story(root: Path, metadata: MetadataConfig, taxi: pd.DataFrame) -> Story:
    from mlops.airflow.tasks import retraining_conf, trigger_of
    from mlops.pipeline import run_pipeline
    from monitoring.monitor import run_monitoring

    root.mkdir(parents=True, exist_ok=True)
    config_file = write_config(root, metadata)
    config = load_config(config_file)
    quiet = lambda _: None  # noqa: E731
    first = run_pipeline(config, start=TRAINING_WINDOW[0], end=TRAINING_WINDOW[1], run_id="train-1",
                         trigger=Trigger("manual", {"user": "test"}), progress=quiet)
    model_v1 = config.serving.model_base_dir / config.serving.model_name / "1"
    log_dir = root / "logs"
    period = training_period_trips(taxi)
    requests: dict[str, list[str]] = {}

    hour_1 = period.sample(400, random_state=1).reset_index(drop=True)
    p1 = logs.score(model_v1, hour_1)
    shadow = np.clip(1.0 - p1, 0.0, 1.0)  # a wildly different candidate: must not count as served
    requests["hour_1"] = logs.write_requests(log_dir, hour_1, p1, *HOUR_1, shadow_probabilities=shadow,
                                             shadow_version=SHADOW_VERSION, seed=1)
    logs.write_feedback(log_dir, hour_1, requests["hour_1"], logs.big_tipper(hour_1).astype(int),
                        HOUR_1[1] - dt.timedelta(minutes=1))
    undrifted = run_monitoring(config, window_start=HOUR_1[0], window_end=HOUR_1[1], log_dir=log_dir, run_id="monitor-1",
                               progress=quiet)

    hour_2 = taxi[taxi["year"] == 2016].reset_index(drop=True)
    requests["hour_2"] = logs.write_requests(log_dir, hour_2, logs.score(model_v1, hour_2), *HOUR_2, seed=2)
    logs.write_feedback(log_dir, hour_2, requests["hour_2"], logs.big_tipper(hour_2).astype(int),
                        HOUR_2[1] - dt.timedelta(minutes=1), count=100)
    drifted = run_monitoring(config, window_start=HOUR_2[0], window_end=HOUR_2[1], log_dir=log_dir, run_id="monitor-2",
                             progress=quiet)

    # What the monitoring DAG sends to taxi_training, and what that DAG records (mlops.airflow.tasks).
    conf = retraining_conf(json.loads(json.dumps(drifted.to_json(), default=str)), {}, "monitor-2")
    trigger = trigger_of(conf["trigger"], "manual")
    retrain_config = config.replace(training=dataclasses.replace(config.training, train_steps=200))
    retrain = run_pipeline(retrain_config, start=TRAINING_WINDOW[0], end=TRAINING_WINDOW[1], run_id="retrain-2",
                           trigger=trigger, progress=quiet)
    model_v2 = config.serving.model_base_dir / config.serving.model_name / "2"
    hour_4 = period.sample(96, random_state=4).reset_index(drop=True)
    requests["hour_4"] = logs.write_requests(log_dir, hour_4, logs.score(model_v2, hour_4), *HOUR_4, model_version=2, seed=4)
    return Story(root, config, config_file, log_dir, first, retrain, undrifted, drifted, requests, trigger)


_STORIES: dict[str, Story] = {}


def story(key: str, root: Path, metadata: MetadataConfig, taxi: pd.DataFrame) -> Story:
    """The story for this backend, built at most once per test process."""
    if key not in _STORIES:
        _STORIES[key] = build_story(root, metadata, taxi)
    return _STORIES[key]
