#!/usr/bin/env bash
# Runs TF Serving's own model-server tests against the embedded model server, test cases unchanged.
#
#   scripts/tf_serving_suite.sh TF_SERVING_CHECKOUT [TestClass.test_name ...]
#
# TF_SERVING_CHECKOUT is a checkout of github.com/tensorflow/serving (at least
# tensorflow_serving/model_servers/ and tensorflow_serving/servables/tensorflow/testdata/). Nothing
# of it is copied into this tree: everything is laid out in a temp folder.
#
# The one harness change: the test base starts `$TEST_SRCDIR/tf_serving/tensorflow_serving/
# model_servers/tensorflow_model_server`; here that path is a two-line script that runs
# `python -m serving.model_server "$@"` in the ML runtime. The test modules are imported from the
# checkout as `tensorflow_serving.model_servers...` beside the installed `tensorflow_serving.apis`;
# `portpicker` (which the test base imports and the ML runtime does not ship) is installed into the
# temp folder. Results: docs/TF_SERVING_SUITE.md.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CHECKOUT="$(cd "${1:?usage: scripts/tf_serving_suite.sh TF_SERVING_CHECKOUT [TestClass.test_name ...]}" && pwd)"
shift
PYTHON="$ROOT/.venvs/ml/bin/python"
UV="$(command -v uv || echo "$ROOT/.venvs/uv/bin/uv")"
TEST_FILE="$CHECKOUT/tensorflow_serving/model_servers/tensorflow_model_server_test.py"
[ -f "$TEST_FILE" ] || { echo "error: $TEST_FILE not found: is $CHECKOUT a tensorflow/serving checkout?" >&2; exit 2; }
[ -x "$PYTHON" ] || { echo "error: the ML runtime $PYTHON is missing: run 'make setup' first" >&2; exit 2; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/tf-serving-suite.XXXXXX")"
SRC="$WORK/srcdir/tf_serving/tensorflow_serving"
mkdir -p "$SRC/model_servers" "$WORK/python/tensorflow_serving"

# The "binary" the test base starts.
cat > "$SRC/model_servers/tensorflow_model_server" <<EOF
#!/bin/sh
PYTHONPATH="$ROOT\${PYTHONPATH:+:\$PYTHONPATH}" exec "$PYTHON" -m serving.model_server "\$@"
EOF
chmod +x "$SRC/model_servers/tensorflow_model_server"
ln -s "$CHECKOUT/tensorflow_serving/servables" "$SRC/servables"

# `tensorflow_serving` as one package over the installed apis and the checkout's model_servers.
cat > "$WORK/python/tensorflow_serving/__init__.py" <<'EOF'
__path__ = __import__("pkgutil").extend_path(__path__, __name__)
EOF
mkdir -p "$WORK/python/tensorflow_serving/model_servers/test_util"
touch "$WORK/python/tensorflow_serving/model_servers/__init__.py" "$WORK/python/tensorflow_serving/model_servers/test_util/__init__.py"
for module in "$CHECKOUT"/tensorflow_serving/model_servers/test_util/*.py; do
    ln -s "$module" "$WORK/python/tensorflow_serving/model_servers/test_util/"
done

"$UV" pip install -q --python "$PYTHON" --target "$WORK/deps" portpicker >/dev/null

echo "TF Serving's suite from $CHECKOUT against serving.model_server (work folder $WORK)" >&2
cd "$WORK"
TEST_SRCDIR="$WORK/srcdir" TF_USE_LEGACY_KERAS=1 PYTHONPATH="$WORK/python:$WORK/deps:$ROOT" TF_CPP_MIN_LOG_LEVEL=2 \
    "$PYTHON" "$TEST_FILE" --test_tmpdir="$WORK/tmp" "$@"
