"""Prometheus scrapes a gateway that serves TLS (deploy/prometheus/prometheus-tls.yml, docs/DEPLOY.md).

A real Prometheus (Debian's, as in test_live_prometheus.py) with the TLS scrape config scrapes a
real gateway serving a self-signed certificate made for the name `gateway`, as compose would:
the target is an address, the name checked is the config's server_name. The compose config's
plain-http gateway job, pointed at the same gateway in the same Prometheus, is down: the scheme
is what makes the difference. And the TLS config is the compose one but for that job.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import PROJECT_ROOT
from tests.deploy.test_live_prometheus import _api, _health
from tests.faults.test_security import self_signed
from tests.fixtures.polling import poll_until
from tests.fixtures.prometheus import PROMETHEUS, running_prometheus
from tests.fixtures.servers import free_port
from tests.serving.conftest import gateway_config_file, http, model_root, model_server, start_gw  # noqa: F401 - fixtures
from tests.serving.gateway.helpers import MODEL, instances, real_trips

PROMTOOL = shutil.which("promtool")
PLAIN_CONFIG = PROJECT_ROOT / "deploy" / "prometheus" / "prometheus.yml"
TLS_CONFIG = PROJECT_ROOT / "deploy" / "prometheus" / "prometheus-tls.yml"


def _jobs(path: Path) -> dict[str, dict[str, Any]]:
    return {job["job_name"]: job for job in yaml.safe_load(path.read_text())["scrape_configs"]}


def test_the_tls_config_is_the_compose_one_with_the_gateway_job_over_https() -> None:
    plain, tls = yaml.safe_load(PLAIN_CONFIG.read_text()), yaml.safe_load(TLS_CONFIG.read_text())
    gateway = _jobs(TLS_CONFIG)["gateway"]
    assert gateway.pop("scheme") == "https"
    assert gateway.pop("tls_config") == {"ca_file": "/etc/prometheus/gateway-ca.crt", "server_name": "gateway"}
    assert gateway == _jobs(PLAIN_CONFIG)["gateway"]
    assert {k: v for k, v in tls.items() if k != "scrape_configs"} == {k: v for k, v in plain.items() if k != "scrape_configs"}
    assert [j for j in tls["scrape_configs"] if j["job_name"] != "gateway"] == \
        [j for j in plain["scrape_configs"] if j["job_name"] != "gateway"]


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is missing: `make test` installs Debian's prometheus package")
def test_promtool_accepts_the_tls_scrape_config() -> None:
    checked = subprocess.run([PROMTOOL, "check", "config", str(TLS_CONFIG)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.skipif(PROMETHEUS is None, reason="Prometheus is missing: `make test` installs Debian's prometheus package")
def test_prometheus_scrapes_a_tls_gateway_with_the_tls_config_and_not_with_the_plain_one(start_gw, http, tmp_path):  # noqa: F811
    pytest.importorskip("cryptography")
    cert_file, key_file = self_signed(tmp_path, dns_names=("gateway",))
    gateway = start_gw(tls_cert_file=cert_file, tls_key_file=key_file)
    answer = http.post(f"{gateway.url}/v1/models/{MODEL}:predict", json={"instances": instances(real_trips(2))},
                       verify=str(cert_file), timeout=30)
    assert answer.status_code == 200, answer.text

    port = free_port()
    target = f"127.0.0.1:{gateway.rest_port}"  # what Docker's DNS gives for `gateway`
    tls_job = _jobs(TLS_CONFIG)["gateway"]
    plain_job = copy.deepcopy(_jobs(PLAIN_CONFIG)["gateway"])
    for job in (tls_job, plain_job):
        job.pop("dns_sd_configs")
        job["static_configs"] = [{"targets": [target]}]
    tls_job["tls_config"]["ca_file"] = str(cert_file)
    plain_job["job_name"] = "gateway-plain"
    config = yaml.safe_load(TLS_CONFIG.read_text())
    config["global"]["scrape_interval"] = "1s"
    config["scrape_configs"] = [tls_job, plain_job]
    with running_prometheus(config, tmp_path, port) as (url, process):
        def both_scraped() -> dict:
            assert process.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
            health = _health(url)
            return health if len(health) == 2 and "unknown" not in health.values() else {}

        health = poll_until(both_scraped, "Prometheus to scrape both jobs once", timeout=60, interval=0.2)
        assert health == {("gateway", target): "up", ("gateway-plain", target): "down"}, health
        served = _api(url, "query", query=f'sum(mlops_gateway_requests_total{{job="gateway", model="{MODEL}", code="200"}})')
        assert served["result"] and float(served["result"][0]["value"][1]) >= 1, served
        errors = {t["labels"]["job"]: t["lastError"] for t in _api(url, "targets")["activeTargets"]}
        assert errors["gateway"] == "" and errors["gateway-plain"], errors
    assert urllib.parse.urlsplit(gateway.url).scheme == "https"
