"""Monitoring of what was served: data drift, training/serving skew, missing values, null outputs,
prediction drift and concept drift, on the gateway's prediction logs.

`monitor.run_monitoring` is the entry (reads the window, runs `checks.py`, records the result in
ML Metadata, writes `report.py`'s page); `results.py` holds the result types, `drift.py` the
distances, `settings.py` the thresholds (`thresholds.toml`), `log_statistics.py` the TFDV
statistics of the logs (a Beam job), `calibrate.py` measures drift scores on real data to set
those thresholds.
"""
