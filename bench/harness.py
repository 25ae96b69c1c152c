"""What every benchmark script needs around its measurements: ports, server processes, summaries.

A server under test always runs in a process of its own, started here and stopped
here by its own pid, so no measurement shares a GIL with the server it measures and
no run leaves a process behind.
"""

from __future__ import annotations

import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from memstore.v1 import users_pb2, users_pb2_grpc

BENCH = Path(__file__).resolve().parent
START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 30.0


def free_port() -> int:
    """A TCP port free on the loopback interface now (the server binds it a moment later)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def local_target() -> str:
    return f"127.0.0.1:{free_port()}"


def spread(values: Sequence[float], fmt: str = "{:,.1f}") -> str:
    """Median [min-max]: every figure of a noisy machine, with how far its runs strayed."""
    return f"{fmt.format(statistics.median(values))} [{fmt.format(min(values))}-{fmt.format(max(values))}]"


def log(message: str) -> None:
    """Progress on stderr, so that the report on stdout stays clean."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def baseline_command(target: str, *, share_port: bool = False) -> list[str]:
    """The bare grpc.aio server of baseline_server.py on ``target`` (sharing it with others
    of its kind when ``share_port``)."""
    command = [sys.executable, str(BENCH / "baseline_server.py"), "--listen", target]
    return [*command, "--share-port"] if share_port else command


@contextmanager
def server_process(
    command: Sequence[str], target: str, log_file: Path, *, env: Mapping[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A server child process, SERVING when yielded, always stopped (SIGTERM, then kill) after."""
    with log_file.open("wb") as out:
        process = subprocess.Popen(list(command), stdout=out, stderr=out, stdin=subprocess.DEVNULL, env=env)
    try:
        wait_until_serving(process, target, log_file)
        yield process
    finally:
        stop(process)


def wait_until_serving(process: subprocess.Popen[bytes], target: str, log_file: Path) -> None:
    """Poll the health service at ``target`` until it says SERVING; fail if the process dies first."""
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited early; the end of {log_file.name}:\n{_tail(log_file)}")
            try:
                response = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.2)


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop one child we started, by its own handle: SIGTERM, and SIGKILL if it lingers."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _tail(log_file: Path, lines: int = 20) -> str:
    return "\n".join(log_file.read_text(errors="replace").splitlines()[-lines:])


def check_get_user(target: str, user_id: str) -> None:
    """One real GetUser must succeed: h2load counts any HTTP 200 as a success, even a gRPC error."""
    with grpc.insecure_channel(target) as channel:
        stub = users_pb2_grpc.UserServiceStub(channel)
        response = stub.GetUser(users_pb2.GetUserRequest(user_id=user_id), timeout=10)
    if not response.user.user_id:
        raise RuntimeError(f"GetUser({user_id!r}) at {target} answered an empty user")
