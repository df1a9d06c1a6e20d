"""Security basics of the gateway (issue 16, section 4): the admin token is rotated without a restart
(the token file is re-read when it changes), refused admin calls are counted in metrics, the
gateway serves TLS (REST and gRPC) from a cert and key in its settings, and neither the token nor
the admin calls that carried it end up in the gateway's logs or files."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import grpc
import pytest
import requests

from serving.client import GrpcPredictionClient
from serving.tensor_protos import serving_apis
from tests.faults.processes import Gateway
from tests.fixtures.polling import poll_until
from tests.serving.conftest import gateway_config_file, http, model_root, model_server, start_gw  # noqa: F401 - fixtures
from tests.serving.gateway.helpers import ADMIN_TOKEN, MODEL, admin, instances, metric_value, real_trips

TOKEN_A = "first-admin-token-0123456789"
TOKEN_B = "second-admin-token-9876543210"


def _write_token(path: Path, token: str) -> None:
    """As an operator rotates it: a temp file renamed over the old one (the gateway never reads half a token)."""
    temp = path.with_name(path.name + ".new")
    temp.write_text(token + "\n")
    os.replace(temp, path)


def _failures(http, gateway, reason: str) -> float:
    return metric_value(http.get(f"{gateway.url}/metrics", timeout=10).text, "mlops_gateway_admin_auth_failures_total",
                        reason=reason)


def test_the_admin_token_is_rotated_without_a_restart_and_refusals_are_counted(start_gw, http, tmp_path):  # noqa: F811
    token_file = tmp_path / "admin_token"
    _write_token(token_file, TOKEN_A)
    gateway = start_gw(admin_token="", admin_token_file=token_file)

    assert admin(http, gateway, "GET", "/models", token=TOKEN_A).status_code == 200
    assert admin(http, gateway, "GET", "/models", token=TOKEN_B).status_code == 403
    assert admin(http, gateway, "GET", "/models", token=None).status_code == 401

    _write_token(token_file, TOKEN_B)
    assert admin(http, gateway, "GET", "/models", token=TOKEN_A).status_code == 403, "the old token still works"
    assert admin(http, gateway, "GET", f"/models/{MODEL}/policy", token=TOKEN_B).status_code == 200

    _write_token(token_file, "short")  # a botched rotation closes the API instead of opening it to a guessable token
    closed = admin(http, gateway, "GET", "/models", token="short")
    assert closed.status_code == 403 and "at least 16 characters" in closed.json()["error"], closed.text
    assert admin(http, gateway, "GET", "/models", token=TOKEN_B).status_code == 403
    token_file.unlink()
    assert admin(http, gateway, "GET", "/models", token=TOKEN_B).status_code == 403
    _write_token(token_file, TOKEN_B)
    assert admin(http, gateway, "GET", "/models", token=TOKEN_B).status_code == 200

    assert _failures(http, gateway, "wrong") == 2
    assert _failures(http, gateway, "missing") == 1
    assert _failures(http, gateway, "unusable_token_file") == 3
    assert TOKEN_B not in http.get(f"{gateway.url}/metrics", timeout=10).text


def self_signed(tmp_path: Path, dns_names: tuple[str, ...] = ("localhost",)) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and `dns_names` and its key, made with the `cryptography` package."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mlops gateway test")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        *map(x509.DNSName, dns_names)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "gateway.crt", tmp_path / "gateway.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    return cert_file, key_file


def test_the_gateway_serves_tls_on_rest_and_grpc(start_gw, http, tmp_path):  # noqa: F811
    pytest.importorskip("cryptography")
    cert_file, key_file = self_signed(tmp_path)
    gateway = start_gw(tls_cert_file=cert_file, tls_key_file=key_file)
    assert gateway.url.startswith("https://")

    answer = http.post(f"{gateway.url}/v1/models/{MODEL}:predict", json={"instances": instances(real_trips(2))},
                       verify=str(cert_file), timeout=30)
    assert answer.status_code == 200 and len(answer.json()["predictions"]) == 2, answer.text
    listed = http.get(f"{gateway.url}/admin/models", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                      verify=str(cert_file), timeout=30)
    assert listed.status_code == 200, listed.text  # the admin API shares the TLS listener
    with pytest.raises(requests.exceptions.SSLError):
        http.get(f"{gateway.url}/healthz", timeout=10)  # a client that does not trust the cert is refused
    with pytest.raises(requests.ConnectionError):
        http.get(gateway.url.replace("https://", "http://") + "/healthz", timeout=10)  # no plaintext on the port

    credentials = grpc.ssl_channel_credentials(root_certificates=cert_file.read_bytes())
    with GrpcPredictionClient(gateway.grpc_target, MODEL) as client, \
            grpc.secure_channel(gateway.grpc_target, credentials) as channel:
        stub = serving_apis().prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(client.build_request(real_trips(2)), timeout=30)
        assert len(response.outputs["probability"].float_val) == 2
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        stub = serving_apis().prediction_service_pb2_grpc.PredictionServiceStub(channel)
        with pytest.raises(grpc.RpcError):
            stub.Predict(client.build_request(real_trips(1)), timeout=10)


def test_a_bad_tls_pair_stops_the_start_naming_the_files(start_gw, tmp_path):  # noqa: F811
    from serving.gateway.config import GatewayConfigError

    cert_file, key_file = tmp_path / "gateway.crt", tmp_path / "gateway.key"
    cert_file.write_text("not a certificate\n")
    key_file.write_text("not a key\n")
    with pytest.raises(GatewayConfigError, match="gateway.crt"):
        start_gw(tls_cert_file=cert_file, tls_key_file=key_file)
    with pytest.raises(GatewayConfigError, match="set both or neither"):
        start_gw(tls_cert_file=cert_file)


def test_no_secret_reaches_the_gateway_logs_or_files(model_server, model_root, tmp_path):  # noqa: F811
    """A verbose gateway process, admin calls with the right and wrong tokens, a rotation; then every
    file it wrote (stderr log, request log, state file, models.config) is searched for both tokens."""
    from tests.serving.gateway.helpers import write_model_config

    config = write_model_config(tmp_path / "models.config", model_root, served=[1], stable=1, canary=None)
    token_file = tmp_path / "secrets" / "admin_token"
    token_file.parent.mkdir()
    _write_token(token_file, TOKEN_A)
    gateway = Gateway(model_server, config, tmp_path / "logs", tmp_path / "state.json", tmp_path / "gateway.stderr",
                      "--verbose", "--admin-token-file", str(token_file), env={"MLOPS_GATEWAY_ADMIN_TOKEN": ""})
    try:
        session = requests.Session()
        for token, expected in ((TOKEN_A, 200), (TOKEN_B, 403), ("Bearer-" + TOKEN_A, 403)):
            answer = session.get(f"{gateway.url}/admin/models", headers={"Authorization": f"Bearer {token}"}, timeout=10)
            assert answer.status_code == expected, answer.text
            assert TOKEN_A not in answer.text and TOKEN_B not in answer.text
        _write_token(token_file, TOKEN_B)
        poll_until(lambda: session.get(f"{gateway.url}/admin/models", headers={"Authorization": f"Bearer {TOKEN_B}"},
                                       timeout=10).ok, "the rotated token in use", timeout=10)
        answer = session.put(f"{gateway.url}/admin/models/{MODEL}/share", json={"share": 0.5},
                             headers={"Authorization": f"Bearer {TOKEN_B}"}, timeout=10)
        assert answer.status_code == 400  # no canary to share with: an error path, which logs
        for number in range(20):
            session.post(f"{gateway.url}/v1/models/{MODEL}:predict", json={"instances": instances(real_trips(1))},
                         headers={"X-Request-Id": f"secret-check-{number}", "Authorization": f"Bearer {TOKEN_B}"},
                         timeout=10).raise_for_status()
    finally:
        assert gateway.stop() == 0
    written = [path for path in tmp_path.rglob("*") if path.is_file() and "secrets" not in path.parts]
    assert any(path.suffix == ".parquet" for path in written), "the gateway wrote no request log"
    assert (tmp_path / "gateway.stderr").stat().st_size > 0, "the verbose gateway logged nothing to search"
    for path in written:
        content = path.read_bytes()
        for token in (TOKEN_A, TOKEN_B):
            assert token.encode() not in content, f"the admin token is in {path}"
