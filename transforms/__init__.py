"""The features: `features.py` is the only definition of feature names, kinds, ranges, the label and
the decisions (no TensorFlow); `preprocessing.py` the pure TFT `preprocessing_fn`;
`feature_spec.py` the TF feature specs. The Beam job that runs the transform is beam_jobs/transform.py.
"""
