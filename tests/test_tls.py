"""TLS and mutual TLS, with certificates made at test time, from grpcio, memstore_client and grpcurl."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from memstore.v1 import users_pb2, users_pb2_grpc
from memstore_client import CreateUserRequest, MemstoreClient, UnavailableError
from memstore_server.config import Settings

from tests.certificates import Certificates, make_certificates
from tests.support import TIMEOUT, RunningServer, run_grpcurl, unique


@pytest.fixture
def certificates(tmp_path: Path) -> Certificates:
    return make_certificates(tmp_path)


def _tls_settings(certs: Certificates, *, mutual: bool) -> Settings:
    return Settings(
        listen="127.0.0.1:0",
        tls_cert=certs.server_cert,
        tls_key=certs.server_key,
        tls_client_ca=certs.ca if mutual else None,
    )


def _create(channel: grpc.Channel) -> str:
    user_id = unique("tls")
    stub = users_pb2_grpc.UserServiceStub(channel)
    response: users_pb2.CreateUserResponse = stub.CreateUser(
        users_pb2.CreateUserRequest(user_id=user_id), timeout=TIMEOUT
    )
    return response.user.user_id


def test_tls_server_answers_a_client_that_trusts_its_ca(
    start_server: Callable[[Settings], RunningServer], certificates: Certificates
) -> None:
    port = start_server(_tls_settings(certificates, mutual=False)).port
    credentials = grpc.ssl_channel_credentials(root_certificates=certificates.ca.read_bytes())
    with grpc.secure_channel(f"localhost:{port}", credentials) as channel:
        assert _create(channel).startswith("tls-")
    with MemstoreClient(f"127.0.0.1:{port}", tls=credentials) as client:
        assert client.user.add(CreateUserRequest(user_id=unique("tls"))).id > 0


def test_tls_server_refuses_plaintext_and_untrusting_clients(
    start_server: Callable[[Settings], RunningServer], certificates: Certificates
) -> None:
    port = start_server(_tls_settings(certificates, mutual=False)).port
    with MemstoreClient(f"127.0.0.1:{port}", timeout=3) as plaintext, pytest.raises(UnavailableError):
        plaintext.user.get("anyone")
    with (
        MemstoreClient(f"127.0.0.1:{port}", tls=True, timeout=3) as system_roots,
        pytest.raises(UnavailableError),
    ):
        system_roots.user.get("anyone")  # the test CA is not among the system's roots


def test_mutual_tls_needs_a_client_certificate(
    start_server: Callable[[Settings], RunningServer], certificates: Certificates
) -> None:
    port = start_server(_tls_settings(certificates, mutual=True)).port
    anonymous = grpc.ssl_channel_credentials(root_certificates=certificates.ca.read_bytes())
    with (
        MemstoreClient(f"127.0.0.1:{port}", tls=anonymous, timeout=3) as client,
        pytest.raises(UnavailableError),
    ):
        client.user.get("anyone")
    identified = grpc.ssl_channel_credentials(
        root_certificates=certificates.ca.read_bytes(),
        private_key=certificates.client_key.read_bytes(),
        certificate_chain=certificates.client_cert.read_bytes(),
    )
    with grpc.secure_channel(f"127.0.0.1:{port}", identified) as channel:
        assert _create(channel).startswith("tls-")


def test_grpcurl_over_tls_and_mutual_tls(
    start_server: Callable[[Settings], RunningServer], certificates: Certificates
) -> None:
    tls_port = start_server(_tls_settings(certificates, mutual=False)).port
    mtls_port = start_server(_tls_settings(certificates, mutual=True)).port
    user_id = unique("curl")
    created = run_grpcurl(
        "-cacert",
        str(certificates.ca),
        "-d",
        json.dumps({"user_id": user_id}),
        f"127.0.0.1:{tls_port}",
        "memstore.v1.UserService/CreateUser",
    )
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["user"]["user_id"] == user_id
    refused = run_grpcurl("-cacert", str(certificates.ca), f"127.0.0.1:{mtls_port}", "list")
    assert refused.returncode != 0
    listed = run_grpcurl(
        "-cacert",
        str(certificates.ca),
        "-cert",
        str(certificates.client_cert),
        "-key",
        str(certificates.client_key),
        f"127.0.0.1:{mtls_port}",
        "list",
    )
    assert listed.returncode == 0, listed.stderr
    assert "memstore.v1.UserService" in listed.stdout


def test_half_a_tls_configuration_is_refused_at_start(certificates: Certificates) -> None:
    from memstore_server.config import ConfigError

    with pytest.raises(ConfigError, match="go together"):
        Settings(tls_cert=certificates.server_cert)
    with pytest.raises(ConfigError, match="needs --tls-cert"):
        Settings(tls_client_ca=certificates.ca)
    with pytest.raises(ConfigError, match="no such file"):
        Settings(tls_cert=certificates.ca.with_name("missing.pem"), tls_key=certificates.server_key)
