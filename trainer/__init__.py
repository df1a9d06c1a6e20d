"""Training: `model.py` (the pure wide-and-deep builder), `train.py` (train and export a SavedModel
with the TFT graph inside), `evaluate.py` (metrics, slices, blessing against the served model),
`report.py` (the evaluation page).
"""
