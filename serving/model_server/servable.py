"""One servable: one loaded version of one model (a SavedModel's `serve` MetaGraph), its signatures
as ready-to-call functions, its metadata, and its warm-up.

`Servable.load` reads the MetaGraph, loads the SavedModel and warms it up (TF Serving's warm-up
records when the version ships them, else one synthetic call per signature); any failure is a
`ServingError` with the status TF Serving would report. Every SavedModel is loaded into a TF1
session (`SessionModule`), as TF Serving loads every model; `tf.saved_model.load` only reads what
the session loader cannot.
`predict`, `classify`, `regress` and `multi_inference` run TF Serving's checks (`signatures.py`) around one TensorFlow call and return
numpy arrays. Which versions are loaded, and when, is the manager's business (`manager.py`).
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import tensorflow as tf
from google.protobuf import message as protobuf_message
from google.protobuf import text_format
from tensorflow.core.protobuf import config_pb2, meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, prediction_log_pb2

from serving.model_server.batching import BatchScheduler
from serving.model_server.signatures import (
    CLASSIFY_METHOD,
    REGRESS_METHOD,
    ClassificationResult,
    Signature,
    check_examples_signature,
    check_input_arrays,
    check_input_names,
    check_output_filter,
    check_predict_method_name,
    classification_result,
    regression_result,
    with_defaults,
)
from serving.model_server.tensors import DT_STRING, TensorSpec, examples_from_input, numpy_dtype, tensor_proto_to_array
from serving.protocol import DEFAULT_SIGNATURE
from serving.status import Code, ServingError, invalid

log = logging.getLogger(__name__)

try:  # the eager converter behind tf.constant, without its dispatch layers: ~20 µs less per input
    from tensorflow.python.eager import context as _eager_context
    from tensorflow.python.framework import constant_op as _constant_op

    def _to_tensor(array: np.ndarray) -> Any:
        return _constant_op.convert_to_eager_tensor(array, _eager_context.context())

except ImportError:  # another TensorFlow layout: the public call does the same work
    _to_tensor = tf.constant

SERVE_TAG = "serve"
WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000  # TF Serving's limit (saved_model_warmup_util.cc)

# observer(model_name, api, microseconds): how long TensorFlow itself ran for one request.
RuntimeObserver = Callable[[str, str, int], None]


def read_meta_graph(path: Path) -> meta_graph_pb2.MetaGraphDef:
    """The `serve` MetaGraphDef of the SavedModel at `path` (its signature_defs are the model's API)."""
    binary, text = path / "saved_model.pb", path / "saved_model.pbtxt"
    saved_model = saved_model_pb2.SavedModel()
    try:
        if binary.is_file():
            saved_model.ParseFromString(binary.read_bytes())
        elif text.is_file():
            text_format.Parse(text.read_text(encoding="utf-8"), saved_model)
        else:
            raise ServingError(
                Code.NOT_FOUND, f"Could not find SavedModel .pb or .pbtxt at supplied export directory path: {path}"
            )
    except (protobuf_message.DecodeError, text_format.ParseError, UnicodeDecodeError) as err:
        raise ServingError(Code.DATA_LOSS, f"{path}: the SavedModel proto cannot be parsed: {err}") from None
    for meta_graph in saved_model.meta_graphs:
        if SERVE_TAG in meta_graph.meta_info_def.tags:
            return meta_graph
    raise ServingError(
        Code.NOT_FOUND,
        f"Could not find meta graph def matching supplied tags: {{ {SERVE_TAG} }}. To inspect available "
        f"tag-sets in the SavedModel, please use the SavedModel CLI: `saved_model_cli` (path: {path})",
    )


_OP_SUFFIX = re.compile(r"\s*\[Op:[^\]]*\]\s*$")


def runtime_message(err: "tf.errors.OpError") -> str:
    """The runtime's own message, without the Python stack of where the graph was built (eager
    TensorFlow prepends it; TF Serving's C++ runtime does not, and it only helps an attacker)."""
    parts = [
        part
        for part in err.message.split("\n\n")
        if not part.startswith(("Graph execution error:", "Detected at node", "  File "))
    ]
    return _OP_SUFFIX.sub("", "\n\n".join(parts).strip()) or err.message


def status_from_exception(err: BaseException) -> ServingError:
    """Any failure as the ServingError TF Serving would report (a TensorFlow error keeps its code)."""
    if isinstance(err, ServingError):
        return err
    if isinstance(err, tf.errors.OpError):
        return ServingError(Code(err.error_code), runtime_message(err))
    return ServingError(Code.UNKNOWN, f"{type(err).__name__}: {err}")


class SessionSignature:
    """One signature of a SavedModel loaded the TF1 way: one session callable that feeds the
    signature's input tensors by name and fetches its outputs. Like TF Serving's session (and unlike
    `Session.run`'s Python feed checks) it feeds any shape: the graph's ops decide."""

    def __init__(self, session: Any, signature_def: meta_graph_pb2.SignatureDef) -> None:
        self._inputs = tuple(sorted(signature_def.inputs))
        self._outputs = tuple(sorted(signature_def.outputs))
        graph = session.graph
        for info in signature_def.outputs.values():
            graph.get_tensor_by_name(info.name)  # KeyError/ValueError now, not at the first request
        self.input_dtypes = {
            alias: int(graph.get_tensor_by_name(signature_def.inputs[alias].name).dtype.as_datatype_enum)
            for alias in self._inputs
        }
        # Session::MakeCallable through the session's own wrapper (private in the pinned TensorFlow):
        # `Session.run` and `make_callable` with feeds check shapes in Python first, TF Serving does not.
        self._callable = session._make_callable_from_options(
            config_pb2.CallableOptions(
                feed=[signature_def.inputs[alias].name for alias in self._inputs],
                fetch=[signature_def.outputs[alias].name for alias in self._outputs],
            )
        )

    def run(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self._callable(*(arrays[alias] for alias in self._inputs))
        return {alias: _like_eager_numpy(value) for alias, value in zip(self._outputs, values)}


def _runtime_input_dtypes(function: Any) -> dict[str, int]:
    """alias -> DataType enum of the tensors a signature function is fed (empty when unknown)."""
    if isinstance(function, SessionSignature):
        return dict(function.input_dtypes)
    try:
        _, specs = function.structured_input_signature
        return {alias: int(spec.dtype.as_datatype_enum) for alias, spec in specs.items()}
    except (AttributeError, TypeError, ValueError):
        return {}


def _like_eager_numpy(value: Any) -> Any:
    """What EagerTensor.numpy() gives for the same tensor: an array, or a numpy scalar for rank 0."""
    array = np.asarray(value)
    return array[()] if array.ndim == 0 else array


class SessionModule:
    """A SavedModel loaded into a TF1 session (`tf.compat.v1.saved_model.loader.load`), as TF Serving
    loads every SavedModel: what `Servable` loads first (see `Servable.load` for why)."""

    def __init__(self, session: Any, meta_graph: meta_graph_pb2.MetaGraphDef) -> None:
        self.session = session  # owns the variables: alive as long as the servable
        self.signatures: dict[str, SessionSignature] = {}
        for key, signature_def in meta_graph.signature_def.items():
            try:
                self.signatures[key] = SessionSignature(session, signature_def)
            except (KeyError, ValueError, TypeError) as err:  # e.g. an init-op entry without outputs
                log.info("signature %s cannot be called: %s", key, err)

    @classmethod
    def load(cls, path: Path) -> "SessionModule":
        config = tf.compat.v1.ConfigProto(
            intra_op_parallelism_threads=tf.config.threading.get_intra_op_parallelism_threads(),
            inter_op_parallelism_threads=tf.config.threading.get_inter_op_parallelism_threads(),
        )
        graph = tf.Graph()
        session = tf.compat.v1.Session(graph=graph, config=config)
        try:
            with graph.as_default():
                meta_graph = tf.compat.v1.saved_model.loader.load(session, [SERVE_TAG], str(path))
            return cls(session, meta_graph)
        except BaseException:
            session.close()
            raise


class Servable:
    """One loaded version of one model: its signatures, ready-to-call functions and metadata."""

    def __init__(
        self,
        name: str,
        version: int,
        path: Path,
        module: Any,
        meta_graph: meta_graph_pb2.MetaGraphDef,
        observer: RuntimeObserver | None = None,
        scheduler: BatchScheduler | None = None,
        check_method_name: bool = False,
    ) -> None:
        self.name = name
        self._scheduler = scheduler
        self._check_method_name = check_method_name  # --enable_signature_method_name_check
        self.version = version
        self.path = path
        self._module = module  # owns the variables the functions use: keep it alive with them
        self._meta_graph = meta_graph
        self._observer = observer
        self.signatures: dict[str, Signature] = {}
        self._functions: dict[str, Any] = {}
        # alias -> DataType the graph itself takes (a SignatureDef's dtype can be wrong, and TF
        # Serving's runtime only compares a fed tensor with the graph)
        self._input_dtypes: dict[str, dict[str, int]] = {}
        for key, signature_def in meta_graph.signature_def.items():
            if key not in module.signatures:
                continue  # e.g. __saved_model_init_op: metadata lists it, nobody can call it
            self.signatures[key] = Signature.from_def(key, signature_def)
            # Resolved once: requests never look a function up by name or trace anything.
            self._functions[key] = module.signatures[key]
            self._input_dtypes[key] = _runtime_input_dtypes(module.signatures[key])
        self._flat_order: dict[str, tuple[str, ...]] = {}

    @classmethod
    def load(
        cls, name: str, version: int, path: Path, observer: RuntimeObserver | None = None,
        scheduler: BatchScheduler | None = None, check_method_name: bool = False,
    ) -> "Servable":
        """Loads the SavedModel at `path` and warms it up; raises ServingError on any failure.
        `check_method_name`: --enable_signature_method_name_check (TF Serving's default: off)."""
        meta_graph = read_meta_graph(path)
        module: Any
        try:
            # A TF1 session, as TF Serving loads every SavedModel. Also what a long-lived server
            # needs: TensorFlow 2.16 keeps ~0.3 KB of RSS per input tensor of every call of a
            # `tf.saved_model.load` signature function (5.6 KB a request for the taxi model's 19
            # inputs: 0.5 GiB per 100k requests), and none per session call, which is faster too
            # (benchmarks/tf_call_memory.py --servable).
            module = SessionModule.load(path)
        except Exception as session_err:  # noqa: BLE001 - the TF2 loader may read what the session cannot
            session_failure = status_from_exception(session_err).message
            try:
                module = tf.saved_model.load(str(path), tags=[SERVE_TAG])
            except Exception as err:  # noqa: BLE001 - any loader failure becomes the version's error status
                status = status_from_exception(err)
                log.info("%s version %d: the TF1 session loader failed too: %s", name, version, session_failure)
                raise ServingError(status.code, f"Failed to load SavedModel at {path}: {status.message}") from None
            log.info("%s version %d: loaded with tf.saved_model.load (the TF1 session loader: %s)", name, version,
                     session_failure)
        servable = cls(name, version, path, module, meta_graph, observer, scheduler, check_method_name)
        servable.warm_up()
        return servable

    # --- metadata ---

    def signature_def_map(self) -> get_model_metadata_pb2.SignatureDefMap:
        """Every SignatureDef of the MetaGraph, as GetModelMetadata returns it."""
        result = get_model_metadata_pb2.SignatureDefMap()
        for key, signature_def in self._meta_graph.signature_def.items():
            result.signature_def[key].CopyFrom(signature_def)
        return result

    def rest_input_specs(self, signature_name: str) -> Mapping[str, TensorSpec]:
        """The inputs the REST JSON is typed by (HttpRestApiHandler::GetInfoMap and its error)."""
        key = signature_name or DEFAULT_SIGNATURE
        signature = self.signatures.get(key)
        if signature is None:
            raise invalid(f'Serving signature name: "{key}" not found in signature def')
        return signature.inputs

    # --- inference ---

    def _call(self, signature: Signature, api: str, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        function = self._functions[signature.name]
        order = self._flat_order.get(signature.name)
        start = time.perf_counter_ns()
        try:
            if isinstance(function, SessionSignature):
                results = function.run(arrays)
            else:
                if order is not None:
                    # Inputs were checked against the signature (names, dtypes) by the caller, so
                    # TensorFlow's per-call re-binding of keyword arguments can be skipped. Like the
                    # keyword call, it feeds any shape: the graph's ops decide (as in TF Serving).
                    outputs = function._call_flat([_to_tensor(arrays[alias]) for alias in order], function.captured_inputs)
                else:
                    outputs = function(**{alias: tf.constant(array) for alias, array in arrays.items()})
                results = {alias: tensor.numpy() for alias, tensor in outputs.items()}
        except tf.errors.OpError as err:
            raise ServingError(Code(err.error_code), runtime_message(err)) from None
        except (TypeError, ValueError) as err:
            raise invalid(f"{signature.name}: {err}") from None
        if self._observer is not None:
            self._observer(self.name, api, (time.perf_counter_ns() - start) // 1000)
        return results

    def predict_signature(self, signature_name: str) -> Signature:
        """The signature a PredictRequest names ("" is serving_default), or TF Serving's error."""
        key = signature_name or DEFAULT_SIGNATURE
        signature = self.signatures.get(key)
        if signature is None:
            raise ServingError(Code.FAILED_PRECONDITION, f'Serving signature key "{key}" not found.')
        check_predict_method_name(signature, self._check_method_name)
        return signature

    def predict(
        self,
        signature_name: str,
        inputs: Mapping[str, np.ndarray],
        output_filter: Sequence[str] = (),
    ) -> tuple[str, dict[str, np.ndarray]]:
        """Runs a signature (predict_util.cc's checks and messages); returns (signature used, outputs)."""
        signature = self.predict_signature(signature_name)
        check_input_names(signature, inputs.keys())
        inputs = with_defaults(signature, inputs)
        check_input_arrays(signature, inputs, self._input_dtypes.get(signature.name))
        wanted = check_output_filter(signature, output_filter)
        if self._scheduler is not None:  # --enable_batching: run together with concurrent calls
            outputs = self._scheduler.run((id(self), signature.name), inputs,
                                          lambda arrays: self._call(signature, "Predict", arrays))
        else:
            outputs = self._call(signature, "Predict", inputs)
        return signature.name, {alias: outputs[alias] for alias in wanted}

    def examples_signature(self, signature_name: str, method: str) -> Signature:
        """The classify/regress signature a request names, checked like classifier.cc/regressor.cc."""
        key = signature_name or DEFAULT_SIGNATURE
        signature = self.signatures.get(key)
        if signature is None:
            raise invalid(f"No signature was found with the name: {key}")
        check_examples_signature(signature, method, self._check_method_name)
        return signature

    def classify(self, signature_name: str, examples: Sequence[bytes]) -> tuple[str, ClassificationResult]:
        """Classify on serialized Examples: (label, score) per class per example."""
        signature = self.examples_signature(signature_name, CLASSIFY_METHOD)
        outputs = self._call_on_examples(signature, "Classify", _string_vector(examples))
        return signature.name, classification_result(outputs, len(examples))

    def regress(self, signature_name: str, examples: Sequence[bytes]) -> tuple[str, list[float]]:
        signature = self.examples_signature(signature_name, REGRESS_METHOD)
        outputs = self._call_on_examples(signature, "Regress", _string_vector(examples))
        return signature.name, regression_result(outputs["outputs"], len(examples))

    def _call_on_examples(self, signature: Signature, api: str, batch: np.ndarray) -> dict[str, np.ndarray]:
        """The serialized Examples fed to the signature's `inputs` (a non-string input is the
        runtime's type error, as for Predict)."""
        arrays = {"inputs": batch}
        check_input_arrays(signature, arrays, self._input_dtypes.get(signature.name))
        return self._call(signature, api, arrays)

    def multi_inference(
        self, tasks: Sequence[tuple[str, str]], examples: Sequence[bytes]
    ) -> list[tuple[str, str, ClassificationResult | list[float]]]:
        """(signature_name, method_name) tasks over the same Examples (multi_inference.cc's rules:
        the Examples are fed to each signature's input tensor, whether or not they share one)."""
        seen: set[str] = set()
        resolved: list[tuple[Signature, str]] = []
        for signature_name, method in tasks:
            key = signature_name or DEFAULT_SIGNATURE
            if key in seen:
                raise invalid(f"Duplicate evaluation of signature: {key}")
            seen.add(key)
            signature = self.signatures.get(key)
            if signature is None:
                raise invalid(f"Requested signature not found in model graph: {key}")
            if method not in (CLASSIFY_METHOD, REGRESS_METHOD):
                raise ServingError(Code.UNIMPLEMENTED, f"Unsupported signature method_name: {method}")
            check_examples_signature(signature, method, self._check_method_name)
            resolved.append((signature, method))
        batch = _string_vector(examples)
        results: list[tuple[str, str, ClassificationResult | list[float]]] = []
        for signature, method in resolved:
            outputs = self._call_on_examples(signature, "MultiInference", batch)
            if method == CLASSIFY_METHOD:
                results.append((signature.name, method, classification_result(outputs, len(examples))))
            else:
                results.append((signature.name, method, regression_result(outputs["outputs"], len(examples))))
        return results

    # --- warm-up ---

    def warm_up(self) -> None:
        """Replays `assets.extra/tf_serving_warmup_requests` if present (a failure fails the load),
        otherwise calls each signature once on a one-row input so the first user request is not
        the one paying for TensorFlow's lazy initialisation."""
        warmup = self.path / WARMUP_FILE
        if warmup.is_file():
            self._replay_warmup(warmup)
            return
        for signature in self.signatures.values():
            arrays = _synthetic_inputs(signature)
            if arrays is None:
                continue
            try:
                reference = self._call(signature, "Warmup", arrays)
            except ServingError as err:
                # Zeros are not a valid input for every model; that is no reason to refuse it.
                log.info("%s version %d: synthetic warm-up of %s skipped: %s", self.name, self.version, signature.name, err)
                continue
            self._enable_flat_call(signature, arrays, reference)

    def _enable_flat_call(self, signature: Signature, arrays: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> None:
        """Switches a signature to TensorFlow's positional call once it gave the same answer as the
        keyword call on the warm-up input (it saves ~1 ms of argument binding per request). Relies
        on ConcreteFunction internals of the pinned TensorFlow; anything unexpected keeps the
        public keyword call."""
        function = self._functions[signature.name]
        keywords = getattr(function, "_arg_keywords", None)
        if not keywords or not hasattr(function, "_call_flat") or sorted(keywords) != sorted(signature.inputs):
            return
        self._flat_order[signature.name] = tuple(keywords)
        try:
            fast = self._call(signature, "Warmup", arrays)
            same = fast.keys() == reference.keys() and all(
                np.array_equal(fast[k], reference[k], equal_nan=fast[k].dtype.kind == "f") for k in fast
            )
        except Exception:  # noqa: BLE001 - the fast path is an optimisation, never a failure
            same = False
        if not same:
            del self._flat_order[signature.name]
            log.info("%s version %d: %s keeps the keyword call", self.name, self.version, signature.name)

    def _replay_warmup(self, warmup: Path) -> None:
        count = 0
        for record in tf.data.TFRecordDataset(str(warmup)).as_numpy_iterator():
            count += 1
            if count > MAX_WARMUP_RECORDS:
                raise invalid(f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) at {warmup}")
            entry = prediction_log_pb2.PredictionLog()
            entry.ParseFromString(record)
            kind = entry.WhichOneof("log_type")
            try:
                if kind == "predict_log":
                    request = entry.predict_log.request
                    inputs = {alias: tensor_proto_to_array(t, alias) for alias, t in request.inputs.items()}
                    self.predict(request.model_spec.signature_name, inputs, list(request.output_filter))
                elif kind == "classify_log":
                    request = entry.classify_log.request
                    self.classify(request.model_spec.signature_name, examples_from_input(request.input))
                elif kind == "regress_log":
                    request = entry.regress_log.request
                    self.regress(request.model_spec.signature_name, examples_from_input(request.input))
                elif kind == "multi_inference_log":
                    request = entry.multi_inference_log.request
                    tasks = [(t.model_spec.signature_name, t.method_name) for t in request.tasks]
                    self.multi_inference(tasks, examples_from_input(request.input))
                else:
                    raise ServingError(Code.UNIMPLEMENTED, f"Unsupported log_type for warmup: {kind}")
            except ServingError as err:
                raise ServingError(err.code, f"Failed to warm up model at {warmup} (record {count}): {err.message}") from None
        log.info("%s version %d: warmed up with %d record(s) from %s", self.name, self.version, count, warmup)


def _string_vector(values: Sequence[bytes]) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = list(values)
    return array


def _synthetic_inputs(signature: Signature) -> dict[str, np.ndarray] | None:
    """One row of zeros / empty strings per input; None when a rank is unknown or a type unsupported."""
    arrays: dict[str, np.ndarray] = {}
    for alias, spec in signature.inputs.items():
        if spec.shape is None:
            return None
        shape = [1 if d < 0 else d for d in spec.shape]
        try:
            dtype = numpy_dtype(spec.dtype)
        except ServingError:
            return None
        arrays[alias] = np.full(shape, b"", dtype=object) if spec.dtype == DT_STRING else np.zeros(shape, dtype)
    return arrays
