"""Hostile and careless clients against a real server: none of them may starve the others.

Each case is what a client needs no credentials (or only a reader that stops
reading) to do: open health watches, open streams and never read them, hold
idle connections, call made-up methods. Every wait is bounded, every socket
is on loopback, and every stream and connection opened here is closed here.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import statistics
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import peewee
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from memstore.v1 import users_pb2, users_pb2_grpc
from memstore_server.config import Settings

from tests.support import (
    STALLED_READER_OPTIONS,
    TIMEOUT,
    RunningServer,
    as_url,
    bulk_users,
    details_of,
    free_port,
    rss_bytes,
    running,
    scrape_metrics,
    unique,
    wait_for,
    wait_until_serving,
)

API_KEY = "starvation-test-key"
CREDENTIALS = (("authorization", f"Bearer {API_KEY}"),)
# 50 users of ~4 KiB per chunk: one chunk is more than the window lets through.
STALLING_CHUNK = 50


@pytest.fixture
def stored_users(db: peewee.Database) -> list[int]:
    """Enough large users that a stream of them cannot fit in the transport's buffers."""
    return bulk_users(db, 400, pad=4000)


@contextlib.contextmanager
def stalled_streams(
    target: str, count: int
) -> Iterator[list[grpc.Future[users_pb2.ListUsersChunkedResponse]]]:
    """``count`` ListUsersChunked streams, each on its own connection, whose readers never read."""
    channels = [grpc.insecure_channel(target, options=STALLED_READER_OPTIONS) for _ in range(count)]
    streams = [
        users_pb2_grpc.UserServiceStub(channel).ListUsersChunked(
            users_pb2.ListUsersChunkedRequest(chunk_size=STALLING_CHUNK), timeout=120, metadata=CREDENTIALS
        )
        for channel in channels
    ]
    try:
        yield streams
    finally:
        for stream in streams:
            stream.cancel()
        for channel in channels:
            channel.close()


@contextlib.contextmanager
def health_watches(target: str, count: int) -> Iterator[None]:
    """``count`` unauthenticated Health/Watch streams, held open."""
    channel = grpc.insecure_channel(target)
    health = health_pb2_grpc.HealthStub(channel)
    watches = [health.Watch(health_pb2.HealthCheckRequest(), timeout=120) for _ in range(count)]
    try:
        yield
    finally:
        for watch in watches:
            watch.cancel()
        channel.close()


@contextlib.contextmanager
def idle_connections(port: int, count: int) -> Iterator[None]:
    """``count`` TCP connections that send nothing at all."""
    sockets = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)]
    try:
        yield
    finally:
        for sock in sockets:
            sock.close()


def _open_streams(metrics_port: int) -> float:
    """The server's own count of open response streams, read off its Prometheus endpoint."""
    return scrape_metrics(f"http://127.0.0.1:{metrics_port}/metrics")[("memstore_open_streams", ())]


@pytest.mark.process
def test_watches_stalled_streams_and_idle_connections_leave_every_call_answered(
    database_url: str, stored_users: list[int], tmp_path: Path
) -> None:
    # The server runs as its own process, as in production: a server sharing the test's
    # interpreter would share its GIL with the test's own clients, and measure them too.
    port, metrics_port = free_port(), free_port()
    target = f"127.0.0.1:{port}"
    args = [
        "serve",
        "--database-url",
        as_url(database_url),
        "--listen",
        target,
        "--api-keys",
        API_KEY,
        "--metrics-listen",
        f"127.0.0.1:{metrics_port}",
    ]
    with running(args, tmp_path / "logs") as process, grpc.insecure_channel(target) as channel:
        wait_until_serving(process, target)
        users = users_pb2_grpc.UserServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        user_id = unique("starved")
        users.CreateUser(users_pb2.CreateUserRequest(user_id=user_id), timeout=TIMEOUT, metadata=CREDENTIALS)

        with health_watches(target, 64), stalled_streams(target, 64), idle_connections(port, 200):
            # Every one of the 128 streams is open on the server and stuck, not finished.
            assert wait_for(lambda: _open_streams(metrics_port) >= 128, 30), _open_streams(metrics_port)

            def timed_get(_: int) -> float:
                started = time.perf_counter()
                users.GetUser(users_pb2.GetUserRequest(user_id=user_id), timeout=5, metadata=CREDENTIALS)
                return time.perf_counter() - started

            with ThreadPoolExecutor(max_workers=8) as pool:
                latencies = sorted(pool.map(timed_get, range(400)))
            p99 = statistics.quantiles(latencies, n=100)[98]
            assert p99 < 1.0, f"GetUser p99 {p99:.3f}s with hostile streams open"

            checked = health.Check(health_pb2.HealthCheckRequest(), timeout=2)
            assert checked.status == health_pb2.HealthCheckResponse.SERVING
            assert _open_streams(metrics_port) >= 128  # nothing was shed to answer
        assert process.popen.poll() is None


def test_a_stream_whose_reader_reads_nothing_is_cancelled_logged_and_frees_its_place(
    start_server: Callable[[Settings], RunningServer],
    stored_users: list[int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="memstore_server.streams")
    server = start_server(
        Settings(
            listen="127.0.0.1:0", api_keys=(API_KEY,), stream_stall_timeout=1.0, max_concurrent_streams=1
        )
    )
    with stalled_streams(server.target, 1):
        assert wait_for(lambda: server.handle.streams.open == 1, 10)

        def warned() -> bool:
            return any("read nothing for 1s" in record.getMessage() for record in list(caplog.records))

        assert wait_for(warned, 10), [record.getMessage() for record in caplog.records]
        assert wait_for(lambda: server.handle.streams.open == 0, 5)
        (warning,) = [r for r in caplog.records if "read nothing for" in r.getMessage()]
        assert warning.levelno == logging.WARNING
        assert "ListUsersChunked" in warning.getMessage()
        assert "--stream-stall-timeout" in warning.getMessage()

        # Its place is free: with room for one stream, a reader that reads gets everything.
        with grpc.insecure_channel(server.target) as channel:
            chunks = users_pb2_grpc.UserServiceStub(channel).ListUsersChunked(
                users_pb2.ListUsersChunkedRequest(chunk_size=100), timeout=TIMEOUT, metadata=CREDENTIALS
            )
            received = [user.user_id for chunk in chunks for user in chunk.users]
        assert len(received) >= len(stored_users)


def test_streams_beyond_the_limit_are_refused_with_too_many_streams(
    start_server: Callable[[Settings], RunningServer], stored_users: list[int]
) -> None:
    server = start_server(Settings(listen="127.0.0.1:0", api_keys=(API_KEY,), max_concurrent_streams=2))
    with stalled_streams(server.target, 2) as held:
        assert wait_for(lambda: server.handle.streams.open == 2, 10)
        with grpc.insecure_channel(server.target) as channel:
            users = users_pb2_grpc.UserServiceStub(channel)
            refused = users.ListUsersChunked(
                users_pb2.ListUsersChunkedRequest(chunk_size=10), timeout=TIMEOUT, metadata=CREDENTIALS
            )
            with pytest.raises(grpc.RpcError) as raised:
                next(refused)
            details = details_of(raised.value)
            assert details.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert details.reason == "TOO_MANY_STREAMS"
            assert "--max-concurrent-streams" not in details.message  # the caller's advice, not the flag
            assert "retry" in details.message

            # Unary calls are not streams: they still answer at the limit.
            health = health_pb2_grpc.HealthStub(channel)
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=2).status == 1

            held[0].cancel()
            assert wait_for(lambda: server.handle.streams.open == 1, 10)
            chunks = users.ListUsersChunked(
                users_pb2.ListUsersChunkedRequest(chunk_size=100), timeout=TIMEOUT, metadata=CREDENTIALS
            )
            assert sum(len(chunk.users) for chunk in chunks) >= len(stored_users)


def _call_unknown_methods(target: str, count: int, tag: str) -> set[grpc.StatusCode]:
    """``count`` calls, each to a distinct made-up method with a path of about 500 characters."""
    codes: set[grpc.StatusCode] = set()
    with grpc.insecure_channel(target) as channel:
        for start in range(0, count, 500):
            futures = []
            for number in range(start, min(start + 500, count)):
                path = f"/memstore.v1.Made{tag}{number}/" + "x" * 480
                call = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
                futures.append(call.future(b"", timeout=TIMEOUT))
            for future in futures:
                try:
                    future.result()
                except grpc.RpcError as error:
                    codes.add(error.code())
                else:
                    codes.add(grpc.StatusCode.OK)
    return codes


@pytest.mark.process
def test_unknown_methods_are_unimplemented_and_cost_no_memory(database_url: str, tmp_path: Path) -> None:
    target = f"127.0.0.1:{free_port()}"
    args = ["serve", "--database-url", as_url(database_url), "--listen", target]
    with running(args, tmp_path / "logs") as server:
        wait_until_serving(server, target)
        # Warm up: gRPC's and the allocator's own one-off growth is not ours to count.
        assert _call_unknown_methods(target, 4000, "warm") == {grpc.StatusCode.UNIMPLEMENTED}
        before = rss_bytes(server.popen.pid)
        assert _call_unknown_methods(target, 20_000, "probe") == {grpc.StatusCode.UNIMPLEMENTED}
        growth = rss_bytes(server.popen.pid) - before
        assert growth < 15 * 1024 * 1024, f"RSS grew {growth / 2**20:.1f} MiB over 20,000 unknown methods"
        assert server.popen.poll() is None
