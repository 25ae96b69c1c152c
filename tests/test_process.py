"""The ``memstore-server`` command as an operator runs it: a real process, real signals, real exit codes.

Every server started here is stopped in a ``finally`` block through its own
Popen handle (SIGTERM, then SIGKILL if it lingers), so a failing test never
leaves a process behind; an embedded PostgreSQL a killed server could not stop
is stopped through the pid in its own ``postmaster.pid``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

import grpc
import psycopg2.extensions
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from memstore.v1 import users_pb2, users_pb2_grpc

from tests.support import TIMEOUT, struct, unique

pytestmark = pytest.mark.process

SERVER_COMMAND = Path(sys.executable).parent / "memstore-server"
# Seconds to wait for SERVING: a fresh embedded PostgreSQL runs initdb first.
START_TIMEOUT = 20.0
EMBEDDED_START_TIMEOUT = 60.0
GRACE_PERIOD = 8.0
# Time allowed beyond the grace period for the pool, the embedded PostgreSQL and the interpreter.
EXIT_MARGIN = 10.0
# Exit code of argparse's usage errors.
USAGE_ERROR = 2
TIMESTAMPED_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ \S+: ")


def free_port() -> int:
    """A loopback port that was free a moment ago (the kernel picks it; we release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def as_url(dsn: str, **changes: str) -> str:
    """``dsn`` (URL or key=value) as a postgresql:// URL, which is the form --database-url accepts."""
    params = psycopg2.extensions.parse_dsn(dsn)
    params.update(changes)
    dbname = params.pop("dbname", "")
    query = f"?{urlencode(params)}" if params else ""
    return f"postgresql:///{quote(dbname, safe='')}{query}"


def server_environment() -> dict[str, str]:
    """The test's environment without any MEMSTORE_* setting, so only the flags configure the server."""
    return {name: value for name, value in os.environ.items() if not name.startswith("MEMSTORE_")}


@dataclass
class Process:
    popen: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    def log(self) -> str:
        return self.stderr.read_text(errors="replace")

    def wait_for_exit(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"memstore-server still running after {timeout:.0f}s; log:\n{self.log()}")

    def terminate(self) -> None:
        self.popen.send_signal(signal.SIGTERM)


def stop_embedded_postgres(data_dir: Path) -> None:
    """Fast-shutdown a PostgreSQL left running under ``data_dir`` (its pid is its postmaster.pid)."""
    pid_file = data_dir / "postgres" / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + 15
    while pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)


@contextlib.contextmanager
def running(
    args: Sequence[str], log_dir: Path, env: Mapping[str, str] | None = None, data_dir: Path | None = None
) -> Iterator[Process]:
    """``memstore-server ARGS`` as a child process, always stopped (and reaped) on the way out."""
    log_dir.mkdir(parents=True, exist_ok=True)
    name = f"server-{uuid.uuid4().hex[:8]}"
    stdout, stderr = log_dir / f"{name}.out", log_dir / f"{name}.err"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        popen = subprocess.Popen(
            [str(SERVER_COMMAND), *args],
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            env=dict(server_environment() if env is None else env),
        )
    try:
        yield Process(popen, stdout, stderr)
    finally:
        if popen.poll() is None:
            popen.terminate()
            try:
                popen.wait(timeout=GRACE_PERIOD + EXIT_MARGIN)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait(timeout=10)
        if data_dir is not None:
            stop_embedded_postgres(data_dir)


def run_command(
    args: Sequence[str], env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``memstore-server ARGS`` for a command that exits on its own (killed if it does not)."""
    return subprocess.run(
        [str(SERVER_COMMAND), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        stdin=subprocess.DEVNULL,
        env=dict(server_environment() if env is None else env),
    )


def wait_until_serving(process: Process, target: str, timeout: float = START_TIMEOUT) -> None:
    """Poll the gRPC health check until SERVING; fail early, with the log, if the process dies."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.popen.poll() is not None:
                pytest.fail(f"memstore-server exited with {process.popen.returncode}; log:\n{process.log()}")
            try:
                response: health_pb2.HealthCheckResponse = health.Check(
                    health_pb2.HealthCheckRequest(), timeout=1
                )
            except grpc.RpcError as error:
                last = f"{error.code()}"
            else:
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
            time.sleep(0.2)
    pytest.fail(f"not SERVING after {timeout:.0f}s ({last}); log:\n{process.log()}")


def wait_for_path_to_vanish(path: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return not path.exists()


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
        assert log.rstrip().endswith("stopped"), log
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
