"""The ``memstore-server`` command as an operator runs it: a real process, real signals, real exit codes.

Every server started here is stopped in a ``finally`` block through its own
Popen handle (SIGTERM, then SIGKILL if it lingers), so a failing test never
leaves a process behind; an embedded PostgreSQL a killed server could not stop
is stopped through the pid in its own ``postmaster.pid``.
"""

from __future__ import annotations

import re
import socket
import threading
import time
import uuid
from pathlib import Path

import grpc
import pytest
from memstore.v1 import users_pb2, users_pb2_grpc

from tests.support import (
    EMBEDDED_START_TIMEOUT,
    EXIT_MARGIN,
    GRACE_PERIOD,
    START_TIMEOUT,
    TIMEOUT,
    TIMESTAMPED_LOG_LINE,
    USAGE_ERROR,
    as_url,
    free_port,
    run_command,
    running,
    server_environment,
    struct,
    unique,
    wait_for_path_to_vanish,
    wait_until_serving,
)

pytestmark = pytest.mark.process


def create_user(target: str, user_id: str, **fields: object) -> users_pb2.User:
    with grpc.insecure_channel(target) as channel:
        response: users_pb2.CreateUserResponse = users_pb2_grpc.UserServiceStub(channel).CreateUser(
            users_pb2.CreateUserRequest(user_id=user_id, **fields),  # type: ignore[arg-type]
            timeout=TIMEOUT,
        )
    return response.user


def get_user(target: str, user_id: str) -> users_pb2.User:
    with grpc.insecure_channel(target) as channel:
        response: users_pb2.GetUserResponse = users_pb2_grpc.UserServiceStub(channel).GetUser(
            users_pb2.GetUserRequest(user_id=user_id), timeout=TIMEOUT
        )
    return response.user


def error_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if " ERROR " in line or " CRITICAL " in line]


def test_migrate_applies_the_schema_and_is_idempotent(database_url: str) -> None:
    url = as_url(database_url)
    first = run_command(["migrate", "--database-url", url])
    assert first.returncode == 0, first.stderr
    assert "schema up to date" in first.stderr

    second = run_command(["migrate", "--database-url", url])
    assert second.returncode == 0, second.stderr
    assert "schema up to date (0 migration(s) applied now)" in second.stderr
    assert "Traceback" not in first.stderr + second.stderr


def test_migrate_against_a_missing_database_fails_in_one_readable_line(database_url: str) -> None:
    missing = f"memstore_missing_{uuid.uuid4().hex[:12]}"
    result = run_command(["migrate", "--database-url", as_url(database_url, dbname=missing)])
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    errors = error_lines(result.stderr)
    assert len(errors) == 1, result.stderr
    assert missing in errors[0]
    # Every line is a log record: no stray continuation lines from a multi-line message.
    for line in result.stderr.splitlines():
        assert TIMESTAMPED_LOG_LINE.match(line), f"not a log line: {line!r}\n{result.stderr}"


def test_serve_answers_logs_and_drains_a_stream_on_sigterm(database_url: str, tmp_path: Path) -> None:
    """SIGTERM mid-stream: the stream finishes within the grace period, new calls are refused, exit 0."""
    port = free_port()
    target = f"127.0.0.1:{port}"
    args = ["serve", "--database-url", as_url(database_url), "--listen", target]
    with running([*args, "--grace-period", str(GRACE_PERIOD)], tmp_path / "logs") as server:
        wait_until_serving(server, target)
        user_id = unique("process")
        created = create_user(target, user_id, email="ops@example.com")
        assert get_user(target, user_id) == created

        # Enough data (about 3.5 MB) that the stream cannot sit whole in the transport's buffers.
        padding = struct({"pad": "x" * 60_000})
        streamed_ids = [created.id] + [
            create_user(target, unique("stream"), metadata=padding).id for _ in range(59)
        ]

        with grpc.insecure_channel(target) as channel:
            stream = users_pb2_grpc.UserServiceStub(channel).ListUsersChunked(
                users_pb2.ListUsersChunkedRequest(chunk_size=1, cursor=created.id - 1), timeout=60
            )
            received = [next(stream).users[0].id]
            sigterm_sent = time.monotonic()
            server.terminate()
            time.sleep(0.5)  # let the signal handler run before trying a new call

            refused: list[grpc.StatusCode] = []

            def new_call() -> None:
                try:
                    get_user(target, user_id)
                except grpc.RpcError as error:
                    refused.append(error.code())

            caller = threading.Thread(target=new_call)
            caller.start()
            for message in stream:
                received.extend(user.id for user in message.users)
                time.sleep(0.02)  # a slow reader
            caller.join(timeout=TIMEOUT + 5)

        assert received == streamed_ids
        assert refused == [grpc.StatusCode.UNAVAILABLE]
        returncode = server.wait_for_exit(GRACE_PERIOD + EXIT_MARGIN)
        assert returncode == 0, server.log()
        assert time.monotonic() - sigterm_sent < GRACE_PERIOD + EXIT_MARGIN

        log = server.log()
        assert "/memstore.v1.UserService/CreateUser OK" in log
        assert "/memstore.v1.UserService/GetUser OK" in log
        assert "/grpc.health.v1.Health/Check OK" in log
        assert f"serving on 127.0.0.1:{port}" in log
        assert "SIGTERM: refusing new calls" in log
        assert re.search(r"stopped \d+\.\ds after the signal$", log.rstrip()), log
        # The stream was still open when SIGTERM came, and ended normally afterwards.
        assert log.index("SIGTERM: refusing new calls") < log.index(
            "/memstore.v1.UserService/ListUsersChunked OK"
        )
        assert "Traceback" not in log
        assert error_lines(log) == []

    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0, "port still open after exit"


def test_embedded_postgres_serves_stops_and_keeps_data(tmp_path: Path) -> None:
    """Without a database URL the server runs its own PostgreSQL, stops it on exit, and data persists."""
    env = server_environment()
    assert "MEMSTORE_DATABASE_URL" not in env
    data_dir = tmp_path / "data"
    postmaster_pid = data_dir / "postgres" / "postmaster.pid"
    user_id = unique("embedded")

    port = free_port()
    target = f"127.0.0.1:{port}"
    args = ["serve", "--data-dir", str(data_dir), "--listen", target, "--grace-period", "2"]
    with running(args, tmp_path / "logs", env=env, data_dir=data_dir) as first:
        wait_until_serving(first, target, EMBEDDED_START_TIMEOUT)
        assert postmaster_pid.exists()
        created = create_user(target, user_id, first_name="Persistent")
        first.terminate()
        assert first.wait_for_exit(2 + EXIT_MARGIN) == 0, first.log()
        assert wait_for_path_to_vanish(postmaster_pid, 5), (
            f"embedded PostgreSQL still running after exit; log:\n{first.log()}"
        )
        assert "embedded PostgreSQL running under" in first.log()

    port = free_port()
    target = f"127.0.0.1:{port}"
    args = ["serve", "--data-dir", str(data_dir), "--listen", target, "--grace-period", "2"]
    with running(args, tmp_path / "logs", env=env, data_dir=data_dir) as second:
        wait_until_serving(second, target, EMBEDDED_START_TIMEOUT)
        assert get_user(target, user_id) == created
        second.terminate()
        assert second.wait_for_exit(2 + EXIT_MARGIN) == 0, second.log()
        assert wait_for_path_to_vanish(postmaster_pid, 5), second.log()


def test_second_server_on_a_taken_port_fails_to_start(database_url: str, tmp_path: Path) -> None:
    """Two servers must never share a port (SO_REUSEPORT would split the traffic between them)."""
    port = free_port()
    target = f"127.0.0.1:{port}"
    args = ["serve", "--database-url", as_url(database_url), "--listen", target, "--grace-period", "1"]
    with running(args, tmp_path / "logs") as first:
        wait_until_serving(first, target)
        with running(args, tmp_path / "logs") as second:
            returncode = second.wait_for_exit(START_TIMEOUT)
            log = second.log()
            assert returncode != 0, log
            assert "Traceback" not in log, log
            errors = error_lines(log)
            assert len(errors) == 1, log
            assert str(port) in errors[0], log
        # The first server is untouched and still the one answering.
        assert first.popen.poll() is None
        wait_until_serving(first, target, 5)


def test_malformed_listen_address_is_a_usage_error(tmp_path: Path) -> None:
    result = run_command(["serve", "--listen", "nonsense", "--data-dir", str(tmp_path / "data")])
    assert result.returncode == USAGE_ERROR
    assert "--listen" in result.stderr
    assert "'nonsense'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists(), "nothing may start before the flags are valid"


def test_healthcheck_answers_for_a_serving_server_and_names_the_address_when_nothing_answers(
    database_url: str, tmp_path: Path
) -> None:
    port = free_port()
    target = f"127.0.0.1:{port}"
    with running(["serve", "--database-url", database_url, "--listen", target], tmp_path) as server:
        wait_until_serving(server, target)
        serving = run_command(["healthcheck", "--listen", f"0.0.0.0:{port}"])
        assert serving.returncode == 0, serving.stderr
        assert serving.stdout.strip() == "SERVING"
    nobody = f"127.0.0.1:{free_port()}"
    absent = run_command(["healthcheck", "--listen", nobody, "--timeout", "1"])
    assert absent.returncode == 1
    assert f"nothing answered at {nobody}" in absent.stderr
    assert "Traceback" not in absent.stderr


@pytest.mark.parametrize("address", ["nonsense", "127.0.0.1", "localhost:port", "127.0.0.1:99999"])
def test_healthcheck_of_a_malformed_address_is_a_usage_error_at_once(address: str) -> None:
    started = time.monotonic()
    refused = run_command(["healthcheck", "--listen", address, "--timeout", "30"])
    assert refused.returncode == 2, refused.stderr
    assert "--listen / MEMSTORE_LISTEN must be HOST:PORT" in refused.stderr
    assert repr(address) in refused.stderr
    assert time.monotonic() - started < 20, "it waited for an answer from an address it cannot reach"


def test_healthcheck_help_lists_only_its_own_flags() -> None:
    shown = run_command(["healthcheck", "--help"])
    assert shown.returncode == 0
    assert "--listen" in shown.stdout
    assert "address of the server to ask" in shown.stdout
    assert "to serve gRPC on" not in shown.stdout
    assert "--timeout" in shown.stdout
    for foreign in ("--database-url", "--workers", "--jwt-secret", "--tls-cert", "--grace-period"):
        assert foreign not in shown.stdout
