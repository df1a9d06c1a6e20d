"""ML Metadata: `store.py` connects (SQLite, PostgreSQL, MySQL) and declares the types,
`recorder.py` records pipeline runs and steps, `lineage.py` walks the graph, `queries.py` answers
an auditor's questions, `lineage_graph.py` draws them, `cli.py` is `mlops lineage|runs`.
"""
