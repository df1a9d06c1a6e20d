"""Beam programs, each a library (`build`/step function) and a program on any Beam runner
(`python -m beam_jobs.<job> ... --runner=...`): `ingest`, `clean`, `statistics`, `transform`
(TFT analyze-and-transform), `batch_predict`. Shared by them: `options.py` (flags and `main`),
`outputs.py` (staging, summaries, writers), `csv_source.py` (line-numbered CSV reading),
`example_codec.py` (rows <-> tf.Example, split folders).
"""
