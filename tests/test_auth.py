"""Bearer-token authentication: API keys, a keys file of digests, HS256 JWTs; health stays open."""

from __future__ import annotations

import argparse
import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import jwt
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from memstore.v1 import users_pb2, users_pb2_grpc
from memstore_server.config import ConfigError, Settings, add_arguments, settings_from_args

from tests.support import (
    TIMEOUT,
    RunningServer,
    details_of,
    run_command,
    run_grpcurl,
    server_environment,
    unique,
)

SECRET = "a-jwt-secret-long-enough-for-hs256-and-for-the-hs512-token-of-a-negative-test"


@pytest.fixture
def guarded(start_server: Callable[[Settings], RunningServer], tmp_path: Path) -> str:
    keys_file = tmp_path / "keys"
    keys_file.write_text(
        "# memstore keys\n\nfile-key\nsha256:" + hashlib.sha256(b"hashed-key").hexdigest() + "\n",
        encoding="utf-8",
    )
    settings = Settings(
        listen="127.0.0.1:0", api_keys=("env-key",), api_keys_file=keys_file, jwt_secret=SECRET
    )
    return f"127.0.0.1:{start_server(settings).port}"


def get_user(target: str, token: str | None) -> grpc.StatusCode:
    metadata = (("authorization", f"Bearer {token}"),) if token is not None else ()
    with grpc.insecure_channel(target) as channel:
        stub = users_pb2_grpc.UserServiceStub(channel)
        try:
            stub.GetUser(
                users_pb2.GetUserRequest(user_id=unique("nobody")), timeout=TIMEOUT, metadata=metadata
            )
        except grpc.RpcError as error:
            details = details_of(error)
            if details.code == grpc.StatusCode.UNAUTHENTICATED:
                assert details.reason == "UNAUTHENTICATED"
                assert "missing or invalid credentials" in details.message
            return details.code
    return grpc.StatusCode.OK


def token(claims: dict[str, object], secret: str = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=algorithm)


@pytest.mark.parametrize("key", ["env-key", "file-key", "hashed-key"])
def test_each_configured_key_is_accepted(guarded: str, key: str) -> None:
    assert get_user(guarded, key) == grpc.StatusCode.NOT_FOUND  # past auth, into the service


def test_a_signed_jwt_is_accepted(guarded: str) -> None:
    assert get_user(guarded, token({"sub": "svc", "exp": int(time.time()) + 60})) == grpc.StatusCode.NOT_FOUND


def test_a_jwt_without_exp_is_refused_unless_allowed(
    guarded: str, start_server: Callable[[Settings], RunningServer]
) -> None:
    forever = token({"sub": "svc"})
    assert get_user(guarded, forever) == grpc.StatusCode.UNAUTHENTICATED
    allowing = start_server(Settings(listen="127.0.0.1:0", jwt_secret=SECRET, jwt_allow_no_exp=True))
    assert get_user(allowing.target, forever) == grpc.StatusCode.NOT_FOUND


def test_audience_and_issuer_are_checked_when_given(
    start_server: Callable[[Settings], RunningServer],
) -> None:
    settings = Settings(listen="127.0.0.1:0", jwt_secret=SECRET, jwt_audience="memstore", jwt_issuer="idp")
    target = start_server(settings).target
    exp = int(time.time()) + 60
    assert get_user(target, token({"aud": "memstore", "iss": "idp", "exp": exp})) == grpc.StatusCode.NOT_FOUND
    assert get_user(target, token({"aud": ["x", "memstore"], "iss": "idp", "exp": exp})) == (
        grpc.StatusCode.NOT_FOUND
    )
    for claims in ({"aud": "other", "iss": "idp"}, {"aud": "memstore", "iss": "evil"}, {"iss": "idp"}, {}):
        assert get_user(target, token({**claims, "exp": exp})) == grpc.StatusCode.UNAUTHENTICATED, claims


def test_jwt_rules_without_a_secret_are_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="need --jwt-secret"):
        Settings(jwt_audience="memstore")


@pytest.mark.parametrize(
    ("arguments", "environment", "expected"),
    [
        ([], {}, False),
        (["--jwt-allow-no-exp"], {}, True),
        (["--jwt-allow-no-exp", "false"], {}, False),
        ([], {"MEMSTORE_JWT_ALLOW_NO_EXP": "true"}, True),
        ([], {"MEMSTORE_JWT_ALLOW_NO_EXP": "0"}, False),
    ],
)
def test_jwt_allow_no_exp_is_a_switch(
    arguments: list[str], environment: dict[str, str], expected: bool
) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser, environment)
    settings = settings_from_args(parser.parse_args([*arguments, "--jwt-secret", SECRET]))
    assert settings.jwt_allow_no_exp is expected


@pytest.mark.parametrize(
    "presented",
    [
        None,
        "",
        "wrong-key",
        "env-key2",
        "ENV-KEY",
        hashlib.sha256(b"hashed-key").hexdigest(),  # the digest itself is not a key
        "sha256:" + hashlib.sha256(b"hashed-key").hexdigest(),
    ],
)
def test_missing_or_wrong_keys_are_unauthenticated(guarded: str, presented: str | None) -> None:
    assert get_user(guarded, presented) == grpc.StatusCode.UNAUTHENTICATED


def test_bad_jwts_are_unauthenticated(guarded: str) -> None:
    now = int(time.time())
    assert get_user(guarded, token({"sub": "svc", "exp": now - 10})) == grpc.StatusCode.UNAUTHENTICATED
    assert get_user(guarded, token({"sub": "svc"}, secret="another-secret-that-is-long-enough")) == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    assert get_user(guarded, token({"sub": "svc"}, algorithm="HS512")) == grpc.StatusCode.UNAUTHENTICATED
    assert get_user(guarded, "a.b.c") == grpc.StatusCode.UNAUTHENTICATED


def test_other_schemes_are_unauthenticated(guarded: str) -> None:
    with grpc.insecure_channel(guarded) as channel:
        stub = users_pb2_grpc.UserServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.GetUser(
                users_pb2.GetUserRequest(user_id="u"),
                timeout=TIMEOUT,
                metadata=(("authorization", "Basic env-key"),),
            )
    assert details_of(raised.value).code == grpc.StatusCode.UNAUTHENTICATED


def test_streams_need_a_token_too(guarded: str) -> None:
    with grpc.insecure_channel(guarded) as channel:
        stub = users_pb2_grpc.UserServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            list(stub.ListUsersChunked(users_pb2.ListUsersChunkedRequest(), timeout=TIMEOUT))
    assert details_of(raised.value).code == grpc.StatusCode.UNAUTHENTICATED


def test_health_answers_without_credentials(guarded: str) -> None:
    with grpc.insecure_channel(guarded) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_grpcurl_needs_the_header_for_reflection_and_calls(guarded: str) -> None:
    refused = run_grpcurl("-plaintext", guarded, "list")
    assert refused.returncode != 0
    assert "Unauthenticated" in refused.stderr or "missing or invalid credentials" in refused.stderr
    header = ["-H", "authorization: Bearer env-key"]
    listed = run_grpcurl(*header, "-plaintext", guarded, "list")
    assert listed.returncode == 0, listed.stderr
    assert "memstore.v1.UserService" in listed.stdout
    created = run_grpcurl(
        *header,
        "-plaintext",
        "-d",
        f'{{"user_id": "{unique("curl")}"}}',
        guarded,
        "memstore.v1.UserService/CreateUser",
    )
    assert created.returncode == 0, created.stderr


def test_the_suite_server_has_auth_off(users: users_pb2_grpc.UserServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        users.GetUser(users_pb2.GetUserRequest(user_id=unique("anyone")), timeout=TIMEOUT)
    assert details_of(raised.value).code == grpc.StatusCode.NOT_FOUND


def test_a_keys_file_with_no_key_is_a_start_up_error_not_auth_off(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("# keys are added at deploy time\n\n   \n# sha256:...\n")
    with pytest.raises(ConfigError, match="holds no key"):
        Settings(api_keys_file=keys_file)
    keys_file.write_text("sha256:not-hex\n")
    with pytest.raises(ConfigError, match="not a hex SHA-256 digest"):
        Settings(api_keys_file=keys_file)


# Every key source given but empty: as a flag, as a set variable (MEMSTORE_X= in a unit
# file or a compose file whose secret did not arrive), blank or only separators.
EMPTY_KEY_SOURCES = [
    (setting, value) for setting in ("--api-keys", "--api-keys-file", "--jwt-secret") for value in ("", "   ")
] + [("--api-keys", ","), ("--api-keys", " , ")]


def _variable(flag: str) -> str:
    return "MEMSTORE_" + flag.removeprefix("--").replace("-", "_").upper()


@pytest.mark.parametrize(("setting", "value"), EMPTY_KEY_SOURCES)
@pytest.mark.parametrize("source", ["flag", "environment"])
def test_a_key_source_given_but_empty_is_refused_never_auth_off(
    setting: str, value: str, source: str, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser, {_variable(setting): value} if source == "environment" else {})
    with pytest.raises(SystemExit) as exited:
        settings_from_args(parser.parse_args([f"{setting}={value}"] if source == "flag" else []))
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert setting in error
    assert "authentication off" in error


def test_unset_key_sources_and_other_empty_variables_mean_unset() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser, {"MEMSTORE_METRICS_LISTEN": "", "MEMSTORE_JWT_AUDIENCE": ""})
    settings = settings_from_args(parser.parse_args([]))
    assert (settings.api_keys, settings.api_keys_file, settings.jwt_secret) == ((), None, None)
    assert settings.metrics_listen is None


@pytest.mark.parametrize("secret", ["", " \t"])
def test_settings_refuse_a_blank_jwt_secret(secret: str) -> None:
    with pytest.raises(ConfigError, match="jwt-secret"):
        Settings(jwt_secret=secret)
    with pytest.raises(ConfigError, match="api-keys"):
        Settings(api_keys=(secret,))


@pytest.mark.process
def test_serve_with_an_empty_secret_variable_exits_before_serving() -> None:
    """As a deployment would start it: the secret's variable present, its value missing."""
    environment = {**server_environment(), "MEMSTORE_JWT_SECRET": ""}
    started = run_command(
        ["serve", "--listen", "127.0.0.1:0", "--database-url", "postgresql:///x"], environment
    )
    assert started.returncode == 2, started.stderr
    assert "MEMSTORE_JWT_SECRET" in started.stderr
    assert "bound" not in started.stderr


def test_the_start_up_log_states_the_mode_enforced(
    start_server: Callable[[Settings], RunningServer], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="memstore_server.app")
    start_server(Settings(listen="127.0.0.1:0", api_keys=("k1", "k2"), jwt_secret=SECRET))
    start_server(Settings(listen="127.0.0.1:0"))
    bound = [record.getMessage() for record in caplog.records if record.getMessage().startswith("bound ")]
    assert "auth on: 2 API key(s) or HS256 JWTs with exp" in bound[0]
    assert bound[1].endswith("auth off)")
