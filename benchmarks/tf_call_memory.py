"""RSS kept per call of a `tf.function` taking K SparseTensor arguments, as TFT's analysis and
transform call theirs once per record batch (docs/SCALE.md "Transform's growth").

    .venvs/ml/bin/python benchmarks/tf_call_memory.py --arguments 2 18 --rows 1000 4096

On TensorFlow 2.16 it prints ~1 KB per argument per call, whatever the rows per call: the reason
beam_jobs/transform.py reads batches of 4096 rows rather than 1000.
"""

from __future__ import annotations

import argparse
import json


def kept_per_call(arguments: int, rows: int, calls: int, warmup: int = 300) -> float:
    """KB of RSS kept per call, measured over `calls` calls after `warmup` ones."""
    import numpy as np
    import tensorflow as tf

    spec = {f"feature_{i}": tf.SparseTensorSpec([None, None], tf.float32) for i in range(arguments)}

    @tf.function(input_signature=[spec], autograph=False)
    def row_sums(inputs):
        return {name: tf.sparse.reduce_sum(values, axis=1) for name, values in inputs.items()}

    indices = np.stack([np.arange(rows), np.zeros(rows)], axis=1).astype(np.int64)
    values = np.random.default_rng(0).random(rows, dtype=np.float32)

    def call() -> None:
        row_sums({name: tf.SparseTensor(indices, values, [rows, 1]) for name in spec})

    for _ in range(warmup):
        call()
    before = _rss_kb()
    for _ in range(calls):
        call()
    return (_rss_kb() - before) / calls


def _rss_kb() -> int:
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("VmRSS:")).split()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arguments", type=int, nargs="+", default=[2, 18])
    parser.add_argument("--rows", type=int, nargs="+", default=[1000, 4096])
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args()
    for arguments in args.arguments:
        for rows in args.rows:
            kept = kept_per_call(arguments, rows, args.calls)
            print(json.dumps({"sparse_arguments": arguments, "rows_per_call": rows, "kb_kept_per_call": round(kept, 2),
                              "kb_per_argument": round(kept / arguments, 2)}), flush=True)


if __name__ == "__main__":
    main()
