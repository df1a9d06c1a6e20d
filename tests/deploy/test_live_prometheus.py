"""The monitoring wiring, live: a real Prometheus scrapes the real gateway and model server with the
compose scrape config, and every Grafana dashboard query runs against it.

No Docker engine runs here, so this is the closest check of `docker compose up`'s monitoring
half: Prometheus itself (Debian's package, installed by `make test`) parses the config and each
query, the jobs and metric paths of deploy/prometheus/prometheus.yml reach both servers (the model
server started with deploy/tfserving/monitoring.config, as in compose), and each panel shows
data once traffic has flowed. Only the compose service names become loopback addresses.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from serving.gateway.config import ModelPolicy
from tests.deploy.conftest import PROJECT_ROOT
from tests.deploy.test_compose import dashboards, panels_of
from tests.fixtures.polling import poll_until
from tests.fixtures.prometheus import running_prometheus
from tests.fixtures.servers import free_port
from tests.serving.conftest import (  # noqa: F401 - the serving tests' fixtures, used here by name
    gateway_config_file,
    http,
    model_root,
    start_gw,
)
from tests.serving.gateway.helpers import (
    CANARY_VERSION,
    MODEL,
    STABLE_VERSION,
    instances,
    predict,
    real_trips,
    write_model_config,
)

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
SCRAPE_CONFIG = PROJECT_ROOT / "deploy" / "prometheus" / "prometheus.yml"
MONITORING_CONFIG = PROJECT_ROOT / "deploy" / "tfserving" / "monitoring.config"

pytestmark = pytest.mark.skipif(
    PROMETHEUS is None or PROMTOOL is None,
    reason="Prometheus is missing: `make test` installs Debian's prometheus package",
)

# Panels that stay empty unless something fails: this traffic has no 5xx and no null outputs.
EMPTY_WITHOUT_FAILURES = {"Server error ratio", "Server error ratio by label", "Null outputs by version"}


def test_promtool_accepts_the_compose_scrape_config() -> None:
    checked = subprocess.run([PROMTOOL, "check", "config", str(SCRAPE_CONFIG)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.fixture
def model_server(model_root: Path, tmp_path: Path) -> Iterator[Any]:  # noqa: F811 - this test's own server
    """The embedded model server with the compose monitoring config (the shared one has none)."""
    from serving.model_server import start_model_server

    config = write_model_config(tmp_path / "server.models.config", model_root,
                                served=[STABLE_VERSION, CANARY_VERSION], stable=STABLE_VERSION, canary=CANARY_VERSION)
    handle = start_model_server(port=0, rest_api_port=0, model_config_file=config, monitoring_config_file=MONITORING_CONFIG)
    yield handle
    handle.stop()


@pytest.fixture
def prometheus(model_server: Any, start_gw: Any, tmp_path: Path) -> Iterator[tuple[str, Any]]:
    """Prometheus on loopback scraping two gateway replicas (canary at 30 %, partial automation; the
    traffic goes to the first) and the model server."""
    policy = {MODEL: ModelPolicy(policy="canary", canary_share=0.3, automation="partial", band=(0.0, 0.5))}
    gateway, replica = start_gw(models=policy), start_gw(models=policy)
    port = free_port()
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    config["global"]["scrape_interval"] = "1s"
    # What Docker's DNS gives compose: `gateway` is every replica's address.
    addresses = {"gateway:8080": [f"127.0.0.1:{gateway.rest_port}", f"127.0.0.1:{replica.rest_port}"],
                 "tfserving:8501": [urllib.parse.urlsplit(model_server.rest_url).netloc],
                 "localhost:9090": [f"127.0.0.1:{port}"]}
    jobs = set()
    for job in config["scrape_configs"]:
        jobs.add(job["job_name"])
        names = [f"{name}:{sd['port']}" for sd in job.pop("dns_sd_configs", []) for name in sd["names"]]
        groups = job.setdefault("static_configs", []) + ([{"targets": names}] if names else [])
        for group in groups:
            group["targets"] = [address for target in group["targets"] for address in addresses[target]]
        job["static_configs"] = groups
    assert jobs == {"gateway", "tfserving", "prometheus"}
    with running_prometheus(config, tmp_path, port) as (url, process):
        def every_target_up() -> bool:  # Prometheus hands out its first targets a few seconds after it is ready
            assert process.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
            health = _health(url)
            return len(health) == 4 and set(health.values()) == {"up"}  # both replicas scraped on their own

        poll_until(every_target_up, "Prometheus to scrape every target", timeout=60, interval=0.2)
        yield url, gateway


def _health(url: str) -> dict[str, str]:
    """Scrape health by (job, instance) ({} until Prometheus answers and has targets)."""
    try:
        targets = _api(url, "targets")["activeTargets"]
    except OSError:
        return {}
    return {(target["labels"]["job"], target["labels"]["instance"]): target["health"] for target in targets}


def _api(url: str, path: str, **params: str) -> Any:
    with urllib.request.urlopen(f"{url}/api/v1/{path}?{urllib.parse.urlencode(params)}", timeout=10) as response:
        document = json.loads(response.read())
    assert document["status"] == "success", document
    return document["data"]


def _as_grafana_would(expr: str) -> str:
    return expr.replace("$__rate_interval", "1m").replace("$model", MODEL)


def test_every_dashboard_query_runs_on_live_scrapes_and_shows_the_traffic(prometheus, http):  # noqa: F811
    url, gateway = prometheus
    trips = real_trips(62)
    for burst in range(2):  # two bursts a few scrapes apart, so each rate() sees counters grow
        for index in range(30 * burst, 30 * burst + 30):  # real trips (with their missing values), 1 or 3 per request
            body = {"instances": instances(trips[index:index + 1 + 2 * (index % 2)])}
            assert predict(http, gateway, body, key=f"rider-{index}").status_code == 200
        assert predict(http, gateway, {"instances": [{"fare": "twelve"}]}).status_code == 400  # an error code to show
        time.sleep(2.5)  # time passes: the next burst lands a few scrapes later

    def served_all() -> bool:  # scraped after the traffic: the gateway's request count is in
        served = _api(url, "query", query=f'sum(mlops_gateway_requests_total{{model="{MODEL}", code="200"}})')["result"]
        return bool(served) and float(served[0]["value"][1]) >= 60

    poll_until(served_all, f"Prometheus to see 60 served requests (targets {_health(url)})", timeout=60, interval=0.5)

    model_values = _api(url, "series", **{"match[]": "mlops_gateway_requests_total"})
    assert {series["model"] for series in model_values} >= {MODEL}  # the $model variable's values

    empty = []
    for dashboard in dashboards().values():
        for panel in panels_of(dashboard):
            for target in panel.get("targets", []):
                # Prometheus parses and runs the query; a syntax error or unknown function fails here.
                result = _api(url, "query", query=_as_grafana_would(target["expr"]))["result"]
                values = [float(sample["value"][1]) for sample in result]
                if not values or all(math.isnan(value) for value in values):
                    empty.append(panel["title"])
    assert set(empty) <= EMPTY_WITHOUT_FAILURES, f"panels without data after real traffic: {sorted(set(empty))}"

    labels = {sample["metric"]["label"] for sample in _api(url, "query", query=_as_grafana_would(
        'sum by (label) (rate(mlops_gateway_requests_total{model=~"$model"}[$__rate_interval]))'))["result"]}
    assert labels >= {"stable", "canary"}  # the canary panels really compare the two
