"""The shared leaves: errors, configuration, code version and atomic writes.

Every other package may import `core`; `core` imports no project package (tests/test_layers.py).
"""
