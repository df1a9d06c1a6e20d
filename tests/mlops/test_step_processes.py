"""`mlops pipeline run`'s steps in processes of their own: a step whose process dies is a clear
error naming the step (the pipeline stops there; a re-run reuses what finished)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time

import pytest

from core.config import config_from_dict
from metadata.recorder import Trigger
from mlops.pipeline import StepProcessError, steps_in_own_processes


def _kill_the_first_child(killed: list[int], deadline: float) -> None:
    while time.monotonic() < deadline:
        children = multiprocessing.active_children()
        if children:
            os.kill(children[0].pid, signal.SIGKILL)
            killed.append(children[0].pid)
            return
        time.sleep(0.01)


def test_a_step_whose_process_dies_is_a_clear_error_naming_the_step(tmp_path):
    config = config_from_dict({"pipeline_root": "pipeline", "metadata": {"sqlite_path": "mlmd.sqlite"}}, tmp_path)
    call = steps_in_own_processes(config, "run-killed", Trigger("test"))
    killed: list[int] = []
    killer = threading.Thread(target=_kill_the_first_child, args=(killed, time.monotonic() + 60))
    killer.start()
    try:
        # The step never gets to run: its process is killed while it starts (importing TensorFlow).
        with pytest.raises(StepProcessError, match=r"^push: its process ended without a result \(killed, or out of "
                                                   r"memory\?\); run the pipeline again to redo it"):
            call("push", None, None)
    finally:
        killer.join()
    assert killed, "no step process was started"
