"""RSS kept per call of a `tf.function` taking K SparseTensor arguments, as TFT's analysis and
transform call theirs once per record batch (docs/SCALE.md "Transform's growth"); with
`--servable MODEL_DIR`, per call of a SavedModel's serving signature loaded both ways the model
server can load it (a TF1 session, `tf.saved_model.load`).

    .venvs/ml/bin/python benchmarks/tf_call_memory.py --arguments 2 18 --rows 1000 4096
    .venvs/ml/bin/python benchmarks/tf_call_memory.py --servable var/serving/models/taxi/1

On TensorFlow 2.16 the first prints ~1 KB per argument per call, whatever the rows per call: the
reason beam_jobs/transform.py reads batches of 4096 rows rather than 1000. The second prints ~5.6 KB
per call of the taxi model through `tf.saved_model.load` and none through the session: the reason
serving/model_server/servable.py loads into a session first.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


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


def servable_per_call(model_dir: str, loader: str, calls: int, warmup: int = 300) -> dict[str, float]:
    """KB of RSS kept and microseconds per call of the model's serving_default signature, one row a
    call, with the signature loaded by `loader` ("session" or "tf2")."""
    import time
    from pathlib import Path

    import numpy as np
    import tensorflow as tf

    from serving.model_server.servable import SERVE_TAG, SessionModule

    def zeros(dtype: tf.DType) -> np.ndarray:
        return np.array([b"0"], dtype=object) if dtype == tf.string else np.zeros([1], dtype.as_numpy_dtype)

    if loader == "session":
        signature = SessionModule.load(Path(model_dir)).signatures["serving_default"]
        arrays = {alias: zeros(tf.dtypes.as_dtype(dtype)) for alias, dtype in signature.input_dtypes.items()}

        def call() -> None:
            signature.run(arrays)
    else:
        function = tf.saved_model.load(model_dir, tags=[SERVE_TAG]).signatures["serving_default"]
        arrays = {alias: zeros(spec.dtype) for alias, spec in function.structured_input_signature[1].items()}

        def call() -> None:
            {alias: tensor.numpy() for alias, tensor in function(**{a: tf.constant(x) for a, x in arrays.items()}).items()}

    for _ in range(warmup):
        call()
    before, started = _rss_kb(), time.perf_counter()
    for _ in range(calls):
        call()
    return {"kb_kept_per_call": round((_rss_kb() - before) / calls, 2),
            "microseconds_per_call": round((time.perf_counter() - started) / calls * 1e6)}


def _rss_kb() -> int:
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("VmRSS:")).split()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arguments", type=int, nargs="+", default=[2, 18])
    parser.add_argument("--rows", type=int, nargs="+", default=[1000, 4096])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--servable", metavar="MODEL_DIR", help="a SavedModel version directory: measure its "
                        "serving signature instead, loaded each way (each in a fresh process)")
    parser.add_argument("--loader", choices=("session", "tf2"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.servable:
        if args.loader:
            print(json.dumps({"loader": args.loader, **servable_per_call(args.servable, args.loader, args.calls)}), flush=True)
            return
        for loader in ("session", "tf2"):
            subprocess.run([sys.executable, __file__, "--servable", args.servable, "--loader", loader,
                            "--calls", str(args.calls)], check=True)
        return
    for arguments in args.arguments:
        for rows in args.rows:
            kept = kept_per_call(arguments, rows, args.calls)
            print(json.dumps({"sparse_arguments": arguments, "rows_per_call": rows, "kb_kept_per_call": round(kept, 2),
                              "kb_per_argument": round(kept / arguments, 2)}), flush=True)


if __name__ == "__main__":
    main()
