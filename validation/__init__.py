"""Data validation with TFDV: `schema.py` (the curated schema), `validate.py` (statistics against it,
anomalies as typed errors), `report.py` (the statistics page).
"""
