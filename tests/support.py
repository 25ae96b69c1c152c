"""Helpers shared by the tests: servers in-process and as processes, free ports, bulk data, error details."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import grpc
import peewee
import psycopg2.extensions
import pytest
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from hypothesis import strategies as st
from memstore.v1 import users_pb2, users_pb2_grpc
from memstore_server import lifecycle
from memstore_server.app import ServerHandle, create_server
from memstore_server.config import Settings
from opentelemetry import trace
from prometheus_client.parser import text_string_to_metric_families

T = TypeVar("T")

# Every call in the suite gets a deadline, so a hang fails a test instead of the run.
TIMEOUT = 10.0


@dataclass(frozen=True)
class ServerAddress:
    target: str


class LoopThread:
    """An event loop running in a background thread, for servers that tests call with blocking stubs."""

    def __init__(self) -> None:
        self._loop = lifecycle.new_event_loop()  # the kind of loop the server process runs
        self._thread = threading.Thread(target=self._loop.run_forever, name="test-loop", daemon=True)
        self._thread.start()

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        """Run ``coroutine`` on the loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


class RunningServer(LoopThread):
    """A real memstore server (app.create_server) on a loopback port, serving from an event
    loop of its own in a background thread, so tests can call it with blocking stubs."""

    def __init__(
        self,
        settings: Settings,
        db: peewee.Database,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        database_health: bool = True,
    ) -> None:
        super().__init__()
        self.handle: ServerHandle = self.call(self._start(settings, db, tracer_provider, database_health))

    @property
    def port(self) -> int:
        return self.handle.port

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.handle.port}"

    def stop(self, grace: float | None = None) -> None:
        """Stop serving (cancelling calls still running after ``grace``) and end the loop."""
        if self._loop.is_closed():
            return
        self.call(self._stop(grace))
        self.close()

    @staticmethod
    async def _start(
        settings: Settings,
        db: peewee.Database,
        tracer_provider: trace.TracerProvider | None,
        database_health: bool,
    ) -> ServerHandle:
        handle = create_server(settings, db, tracer_provider=tracer_provider)
        await handle.server.start()
        if database_health:
            await handle.database_health.start()
        handle.feed.start()
        return handle

    async def _stop(self, grace: float | None) -> None:
        await self.handle.server.stop(grace)
        await self.handle.database_health.stop()
        await self.handle.feed.stop()
        self.handle.blocking.shutdown()


def unique(prefix: str = "id") -> str:
    """An id no other test uses, so tests need not clean up after each other."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def struct(value: dict[str, Any]) -> struct_pb2.Struct:
    result = struct_pb2.Struct()
    result.update(value)
    return result


def _length_delimited(field_number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field, encoded by hand."""
    length, size = b"", len(payload)
    while True:
        byte, size = size & 0x7F, size >> 7
        length += bytes([byte | (0x80 if size else 0)])
        if not size:
            return bytes([field_number << 3 | 2]) + length + payload


def create_user_request_nested(user_id: str, depth: int) -> bytes:
    """A serialized CreateUserRequest whose metadata is ``depth`` objects deep (``{"n": {"n": {}}}``
    is 3, the metadata object itself being level 1), built by hand: no protobuf library
    builds one deeper than its own parser would take."""
    struct_bytes = b""  # the innermost object, empty
    for _ in range(depth - 1):
        value = _length_delimited(5, struct_bytes)  # Value.struct_value
        entry = _length_delimited(1, b"n") + _length_delimited(2, value)  # map entry: key, value
        struct_bytes = _length_delimited(1, entry)  # Struct.fields
    return _length_delimited(1, user_id.encode()) + _length_delimited(5, struct_bytes)


@dataclass(frozen=True)
class ErrorDetails:
    code: grpc.StatusCode
    message: str
    reason: str
    metadata: dict[str, str]
    violations: dict[str, str]


def details_of(error: grpc.RpcError) -> ErrorDetails:
    """The code, message, ErrorInfo and BadRequest field violations a failed call carried."""
    assert isinstance(error, grpc.Call)
    status = rpc_status.from_call(error)
    assert status is not None, f"no google.rpc.Status in {error!r}"
    reason, metadata, violations = "", {}, {}
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            assert info.domain == "memstore"
            reason, metadata = info.reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations = {v.field: v.description for v in bad.field_violations}
    return ErrorDetails(error.code(), error.details() or "", reason, metadata, violations)


def expect_error(call: Any, request: Any, code: grpc.StatusCode) -> ErrorDetails:
    """Make a unary ``call`` that must fail with ``code``; return what the failure carried."""
    try:
        call(request, timeout=TIMEOUT)
    except grpc.RpcError as error:
        details = details_of(error)
        assert details.code == code, f"expected {code}, got {details.code}: {details.message}"
        return details
    raise AssertionError(f"expected {code}, but the call succeeded")


GRPCURL = Path(sys.executable).parent / "grpcurl"


def run_grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    """The grpcurl binary of the dev install with ``args``; its exit code is for the caller to judge."""
    return subprocess.run([str(GRPCURL), *args], capture_output=True, text=True, timeout=30, check=False)


def wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    """Poll ``condition`` until it holds (True) or ``seconds`` pass (False)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def eventually(produce: Callable[[], list[T]], seconds: float = 10.0) -> list[T]:
    """The first non-empty list ``produce`` returns within ``seconds`` (else the last, empty one)."""
    found: list[T] = []

    def produced() -> bool:
        found[:] = produce()
        return bool(found)

    wait_for(produced, seconds)
    return found


# ---------------------------------------------------------------- bulk data


def filtered_listing(
    users: users_pb2_grpc.UserServiceStub, text: str, limit: int, cursor: int = 0
) -> list[users_pb2.User]:
    """Every user ListUsers returns for the filter ``text``, page after page of ``limit``, checking
    that each page's next_cursor is the id of its last user."""
    found: list[users_pb2.User] = []
    while True:
        page = users.ListUsers(
            users_pb2.ListUsersRequest(limit=limit, cursor=cursor, filter=text), timeout=TIMEOUT
        )
        found += page.users
        if not page.next_cursor:
            return found
        assert page.users
        assert page.next_cursor == page.users[-1].id
        cursor = page.next_cursor


# ---------------------------------------------------------------- exported users

# The keys of every JSON line an export writes, in this order (the User message's).
EXPORTED_FIELDS = (
    "user_id",
    "email",
    "first_name",
    "last_name",
    "metadata",
    "uuid",
    "id",
    "created_at",
    "updated_at",
    "session_count",
)
# JSON values of every kind, nested a few levels: what metadata may hold.
json_scalars = st.none() | st.booleans() | st.text(max_size=20) | st.integers(-(2**53), 2**53)
json_values = st.recursive(
    json_scalars | st.floats(allow_nan=False, allow_infinity=False, width=64),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def rfc3339(text: str) -> datetime:
    """An exported timestamp: RFC 3339 in UTC, written with a Z."""
    assert text.endswith("Z"), text
    return datetime.fromisoformat(text[:-1] + "+00:00")


def bulk_users(db: peewee.Database, count: int, *, pad: int = 0) -> list[int]:
    """Insert ``count`` users in one statement (fast set-up); return their ids in order."""
    with db.connection_context():
        cursor = db.execute_sql(
            "INSERT INTO users (user_id, metadata) "
            "SELECT 'bulk-' || g || '-' || md5(random()::text), "
            "jsonb_build_object('n', g, 'pad', repeat('x', %s)) "
            "FROM generate_series(1, %s) AS g RETURNING id",
            (pad, count),
        )
        return sorted(row[0] for row in cursor.fetchall())


def delete_ids(db: peewee.Database, ids: list[int]) -> None:
    with db.connection_context():
        db.execute_sql("DELETE FROM users WHERE id = ANY(%s)", (ids,))


# ---------------------------------------------------------------- server processes


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


def rss_bytes(pid: int) -> int:
    """The resident memory of process ``pid``, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


# A client whose receive window stays at 64 KiB: what a reader that stopped reading looks like.
STALLED_READER_OPTIONS = [("grpc.http2.bdp_probe", 0), ("grpc.use_local_subchannel_pool", 1)]


def wait_for_path_to_vanish(path: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return not path.exists()


def trailer_bytes(error: grpc.RpcError) -> int:
    """The bytes the error's trailers take on the wire: -bin values in base64, the message escaped."""
    assert isinstance(error, grpc.Call)
    total = len(quote(error.details() or "", safe=" "))
    for key, value in error.trailing_metadata() or ():
        total += len(key) + len(base64.b64encode(value) if isinstance(value, bytes) else value)
    return total


def stored_compact_size(db: peewee.Database, table: str, key: str, key_value: str) -> int:
    """Bytes of the stored metadata as PostgreSQL prints it, less the blanks it puts after , and :."""
    with db.connection_context():
        (text,) = db.execute_sql(
            f"SELECT metadata::text FROM {table} WHERE {key} = %s",
            (key_value,),
        ).fetchone()
    return _compact_size(text)


def compact_size_as_stored(db: peewee.Database, json_text: str) -> int:
    """Bytes ``json_text`` takes once stored as jsonb (numbers written out in full), measured
    by PostgreSQL itself, less the blanks it prints after , and :."""
    with db.connection_context():
        (text,) = db.execute_sql("SELECT %s::jsonb::text", (json_text,)).fetchone()
    return _compact_size(text)


def _compact_size(text: str) -> int:
    blanks = sum(1 for _ in _separators(json.loads(text)))
    return len(text.encode("utf-8")) - blanks


def _separators(value: Any) -> Any:
    """One item per blank PostgreSQL's jsonb output puts after a ':' or a ','."""
    if isinstance(value, dict):
        yield from range(len(value) + max(len(value) - 1, 0))
        for item in value.values():
            yield from _separators(item)
    elif isinstance(value, list):
        yield from range(max(len(value) - 1, 0))
        for item in value:
            yield from _separators(item)


MetricSamples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape_metrics(url: str) -> MetricSamples:
    """Every sample of a Prometheus endpoint, keyed by name and sorted labels."""
    with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
