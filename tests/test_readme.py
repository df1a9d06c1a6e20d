"""The README's quick starts, run as written, so they cannot rot.

Every fenced block whose info string ends in `runnable` (```bash runnable, ```python runnable) is
run, in README order, against a live `mlops serve` with a model the real pipeline trained. The
test builds the state `make run` leaves behind in a temp directory that looks like the checkout:
`data/` and `.venvs/` link to the project's, `mlops.toml` is the project's with fewer training
steps, `mlops pipeline run` on the README's window pushes `taxi:1`, `mlops serve` runs there, and
`var/run/gateway_admin_token` holds the admin token as `make run` writes it. Bash blocks run with
`bash -euo pipefail` and the ML runtime first on PATH (what `source .venvs/ml/bin/activate`
does); Python blocks with the ML runtime's interpreter.

Two differences from a user's shell, both mechanical: the gateway listens on free ports, so
`127.0.0.1:8000` (REST) and `127.0.0.1:8001` (gRPC) in a block are replaced by them (another
gateway, e.g. a real `make run`, may own 8000 on this machine); and before a block asks
`mlops lineage request ID`, the test waits for ID to reach the Parquet log, as the README tells a
reader to (the gateway writes it every few seconds).

Not runnable, and not marked: blocks that need Airflow running (`python -m mlops.airflow trigger`),
Docker (`docker compose ...`, checked by tests/deploy/), `make` itself, `mlops doctor`, which
fails without Airflow and is tested in tests/mlops/test_doctor.py, and the data engineer's
`mlops pipeline run`, which after `make run` may rightly exit 3 (not blessed against a better
served model): it is the command this test trains its model with.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import requests

from benchmarks.gateway_benchmark import stop_process
from tests.conftest import PROJECT_ROOT
from tests.fixtures.polling import poll_until
from tests.fixtures.servers import free_port

README = PROJECT_ROOT / "README.md"
REST_ADDRESS, GRPC_ADDRESS = "127.0.0.1:8000", "127.0.0.1:8001"
# The data engineer's pipeline command: not marked runnable (after `make run` it may rightly exit 3,
# not blessed, against a better served model), so the test trains its model with it instead.
PIPELINE_COMMAND = "mlops pipeline run --start 2013-01-01 --end 2015-01-01"
_FENCE = re.compile(r"^```(\w*)([^\n]*)\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)
_LINEAGE_REQUEST = re.compile(r"mlops lineage request (\S+)")
# What a block's output must show, by a piece of the block that identifies it: exit 0 alone would
# pass a curl that printed an error body with -f missing, or a lineage answer about nothing.
EXPECTED_OUTPUT = {
    "/v1/models/taxi:predict": ["X-Model-Version: 1", '"decision"'],
    "/v1/feedback": ['"accepted":1'],
    "prediction_service_pb2_grpc": ["version 1 probability"],
    "mlops predict --csv": ['"model_version": 1'],
    "mlops runs list": ["COMPLETE", "evaluate/report.html"],
    "/healthz": ['"status":"ok"'],
    "mlops lineage request": ["answered by taxi:1", "Model taxi:1"],
    "openlineage/events.jsonl": ["taxi.ingest -> ", "taxi.push -> "],
}


@dataclasses.dataclass(frozen=True)
class Block:
    language: str
    code: str
    line: int  # where the fence opens, for failure messages
    section: str  # the nearest heading above it

    def __str__(self) -> str:
        return f"README.md line {self.line} ({self.section}, {self.language})"


def fenced_blocks(text: str) -> list[tuple[Block, bool]]:
    """Every fenced block with whether it is marked runnable."""
    found = []
    for match in _FENCE.finditer(text):
        before = text[: match.start()]
        headings = re.findall(r"^#+ (.+)$", before, re.MULTILINE)
        block = Block(match.group(1), match.group(3), before.count("\n") + 1, headings[-1] if headings else "")
        found.append((block, match.group(2).strip() == "runnable"))
    return found


def runnable_blocks(text: str) -> list[Block]:
    return [block for block, runnable in fenced_blocks(text) if runnable]


# --- the markers themselves (fast) -----------------------------------------------------------


def test_every_user_has_a_quick_start_and_the_client_calls_are_runnable():
    text = README.read_text()
    for user in ("Data engineer", "Serving client developer", "Platform team", "Auditor"):
        assert re.search(rf"^### {user}", text, re.MULTILINE), f"no quick start for the {user.lower()}"
    code = "\n".join(block.code for block in runnable_blocks(text))
    for needed in ("curl", "/v1/models/taxi:predict", "X-Request-Id", "X-Request-Key", "/v1/feedback",
                   "tensorflow_serving.apis", "mlops predict", "mlops lineage model", "mlops lineage request",
                   "mlops lineage data"):
        assert needed in code, f"no runnable README block uses {needed!r}"
    assert "docker compose up" in text and "python3 docker/make_env.py" in text
    assert any(block.code.strip() == PIPELINE_COMMAND for block, _ in fenced_blocks(text)), "the data engineer's pipeline run changed"
    assert (PROJECT_ROOT / "docs" / "lineage.png").is_file() and "](docs/lineage.png)" in text


def test_runnable_blocks_are_bash_or_python_and_reach_only_the_gateway():
    blocks = runnable_blocks(README.read_text())
    assert blocks, "no block is marked runnable"
    for block in blocks:
        assert block.language in ("bash", "python"), f"{block}: only bash and python blocks can be run"
        # Anything else on loopback would be a server the test does not start.
        others = set(re.findall(r"(?:127\.0\.0\.1|localhost):(\d+)", block.code)) - {"8000", "8001"}
        assert not others, f"{block} reaches ports {sorted(others)} the test does not serve"


def test_the_extractor_keeps_unmarked_blocks_out():
    text = "# A\n```bash\nrm -rf /\n```\n## B\n```bash runnable\necho hi\n```\n```python runnable\nprint(1)\n```\n"
    assert [(b.language, b.code, b.line, b.section) for b in runnable_blocks(text)] == [
        ("bash", "echo hi\n", 6, "B"), ("python", "print(1)\n", 9, "B")]


# --- running them against a live `mlops serve` (slow: trains a model) ------------------------


@dataclasses.dataclass(frozen=True)
class LiveCheckout:
    root: Path
    env: dict[str, str]
    rest_port: int
    grpc_port: int


def _checkout_env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLOPS_")}
    env.update(PATH=f"{root / '.venvs' / 'ml' / 'bin'}{os.pathsep}{env.get('PATH', '')}",
               # The ML runtime's editable install may point at another checkout: this one wins.
               PYTHONPATH=os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")])), TF_CPP_MIN_LOG_LEVEL="2", TF_USE_LEGACY_KERAS="1", PYTHONUNBUFFERED="1")
    return env


def _mlops_toml() -> str:
    text = (PROJECT_ROOT / "mlops.toml").read_text()
    fewer = re.sub(r"(?m)^train_steps = \d+$", "train_steps = 200", text)
    assert fewer != text, "mlops.toml has no [training] train_steps line to shorten"
    return fewer


@pytest.fixture(scope="module")
def live_checkout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveCheckout]:
    root = tmp_path_factory.mktemp("checkout")
    (root / "data").symlink_to(PROJECT_ROOT / "data")
    (root / ".venvs").symlink_to(PROJECT_ROOT / ".venvs")
    (root / "mlops.toml").write_text(_mlops_toml())
    env = _checkout_env(root)
    trained = subprocess.run([sys.executable, "-m", "mlops.cli", *PIPELINE_COMMAND.split()[1:]],
                             cwd=root, env=env, capture_output=True, text=True, timeout=1800)
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    token = secrets.token_urlsafe(32)
    (root / "var" / "run").mkdir(parents=True)
    (root / "var" / "run" / "gateway_admin_token").write_text(token)
    rest_port, grpc_port = free_port(), free_port()
    serve_env = {**env, "MLOPS_GATEWAY_ADMIN_TOKEN": token, "MLOPS_GATEWAY_LOG_FLUSH_SECONDS": "0.2"}
    log = (root / "serve.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "mlops.cli", "serve", "--rest-port", str(rest_port), "--grpc-port", str(grpc_port),
         "--model-rest-port", str(free_port()), "--model-grpc-port", str(free_port())],
        cwd=root, env=serve_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def healthy() -> bool:
        assert process.poll() is None, f"mlops serve exited: {(root / 'serve.log').read_text()[-3000:]}"
        return requests.get(f"http://127.0.0.1:{rest_port}/healthz", timeout=2).status_code == 200

    try:
        poll_until(healthy, "mlops serve to answer /healthz", timeout=300, interval=0.5, retry_on=(requests.ConnectionError,))
        yield LiveCheckout(root, env, rest_port, grpc_port)
    finally:
        stop_process(process)  # SIGTERM: the gateway drains and writes its log, as `make stop` lets it
        log.close()


def _on_test_ports(code: str, live: LiveCheckout) -> str:
    return code.replace(REST_ADDRESS, f"127.0.0.1:{live.rest_port}").replace(GRPC_ADDRESS, f"127.0.0.1:{live.grpc_port}")


def _wait_until_logged(live: LiveCheckout, request_id: str) -> None:
    from metadata.served_lineage import find_logged_request

    poll_until(lambda: find_logged_request(live.root / "var" / "logs" / "predictions", request_id),
               f"request {request_id} in the gateway's Parquet log", timeout=60, interval=0.2)


def run_block(block: Block, live: LiveCheckout, scratch: Path) -> str:
    code = _on_test_ports(block.code, live)
    for request_id in _LINEAGE_REQUEST.findall(code):
        _wait_until_logged(live, request_id)
    if block.language == "python":
        script = scratch / f"readme_line_{block.line}.py"
        script.write_text(code)
        command = [str(live.root / ".venvs" / "ml" / "bin" / "python"), str(script)]
    else:
        command = ["bash", "-euo", "pipefail", "-c", code]
    done = subprocess.run(command, cwd=live.root, env=live.env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{block} failed with exit code {done.returncode}:\n{code}\n--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.slow
def test_every_runnable_block_runs_as_written_against_a_live_mlops_serve(live_checkout, tmp_path):
    blocks = runnable_blocks(README.read_text())
    outputs = {block: run_block(block, live_checkout, tmp_path) for block in blocks}
    for piece, expected in EXPECTED_OUTPUT.items():
        matching = [block for block in blocks if piece in block.code]
        assert matching, f"no runnable block contains {piece!r} any more: update EXPECTED_OUTPUT"
        for block in matching:
            for text in expected:
                assert text in outputs[block], f"{block}: expected {text!r} in its output:\n{outputs[block][-3000:]}"
    page = live_checkout.root / "lineage.html"
    assert page.is_file(), "the --html block wrote no lineage.html"
    from tests.monitoring import browser

    if browser.available():
        loaded = browser.load(page)
        assert loaded.script_errors == "" and not loaded.console_errors, (loaded.script_errors, loaded.console_errors)
        assert "PushedModel" in loaded.dom and "RawData" in loaded.dom
