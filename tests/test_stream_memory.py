"""What response streams hold in memory stays within --stream-memory, however many stop reading.

A stream holds what it read until gRPC takes the message made of it; a client
that never reads keeps it held. Hundreds of such clients once took a server to
4 GB. Here they open every kind of data stream against a real server process
with a small budget, and the server's own count, its RSS, and its answers to
everyone else are checked; then streams that do read, many at once, on a budget
smaller than one page, must all finish (nothing waits on anything for good).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import peewee
import pytest
from memstore.v1 import users_pb2, users_pb2_grpc
from memstore_server.config import ConfigError, Settings
from memstore_server.store.user_messages import refill

from tests.support import (
    STALLED_READER_OPTIONS,
    TIMEOUT,
    RunningServer,
    as_url,
    bulk_users,
    free_port,
    rss_bytes,
    running,
    scrape_metrics,
    unique,
    wait_for,
    wait_until_serving,
)

USERS = 3000
PAD = 3000  # bytes of metadata a user: a page of 1,000 is about 3 MB
BUDGET = 16 * 1024 * 1024
POOL = 4  # so 2 streams are let in at once (half the database threads)


@pytest.fixture
def large_users(db: peewee.Database, empty_store: None) -> list[int]:
    """Only users of about 3 KB each, with their stored messages, as the server writes them.

    Only these: a stream is counted from its first page, so pages of other tests' users
    (smaller, or far larger) before these would make the bound below another one."""
    ids = bulk_users(db, USERS, pad=PAD)
    with db.connection_context():
        refill(db)
    return ids


def _open(target: str, count: int, start: Callable[[users_pb2_grpc.UserServiceStub], Any]) -> list[Any]:
    channels = [grpc.insecure_channel(target, options=STALLED_READER_OPTIONS) for _ in range(count)]
    return [(channel, start(users_pb2_grpc.UserServiceStub(channel))) for channel in channels]


@contextlib.contextmanager
def never_read(target: str, count: int) -> Iterator[None]:
    """``count`` streams of each data-carrying kind, each on its own connection, never read."""
    opened: list[Any] = []
    try:
        opened += _open(
            target,
            count,
            lambda stub: stub.ListUsersChunked(
                users_pb2.ListUsersChunkedRequest(chunk_size=1000), timeout=120
            ),
        )
        opened += _open(
            target, count, lambda stub: stub.ExportUsers(users_pb2.ExportUsersRequest(), timeout=120)
        )
        opened += _open(
            target,
            count,
            lambda stub: stub.WatchUsers(users_pb2.WatchUsersRequest(send_initial=True), timeout=120),
        )
        yield
    finally:
        for channel, stream in opened:
            stream.cancel()
            channel.close()


@pytest.mark.process
def test_hundreds_of_streams_that_never_read_stay_within_the_budget(
    database_url: str, large_users: list[int], tmp_path: Path
) -> None:
    port, metrics_port = free_port(), free_port()
    target = f"127.0.0.1:{port}"
    args = [
        "serve",
        "--database-url",
        as_url(database_url),
        "--listen",
        target,
        "--metrics-listen",
        f"127.0.0.1:{metrics_port}",
        "--db-pool-size",
        str(POOL),
        "--stream-memory",
        str(BUDGET),
    ]

    def metric(name: str) -> float:
        return scrape_metrics(f"http://127.0.0.1:{metrics_port}/metrics").get((name, ()), 0.0)

    with running(args, tmp_path / "logs") as process, grpc.insecure_channel(target) as channel:
        wait_until_serving(process, target)
        users = users_pb2_grpc.UserServiceStub(channel)
        user_id = unique("still-served")
        users.CreateUser(users_pb2.CreateUserRequest(user_id=user_id), timeout=TIMEOUT)
        rss_before = rss_bytes(process.popen.pid)

        with never_read(target, 100):
            assert wait_for(lambda: metric("memstore_open_streams") >= 300, 60), metric(
                "memstore_open_streams"
            )
            # Streams beyond the budget wait to be let in; those let in fill it and stall.
            assert wait_for(lambda: metric("memstore_stream_memory_waits_total") > 0, 30)
            held = []
            for _ in range(20):
                held.append(metric("memstore_stream_held_bytes"))
                time.sleep(0.1)
            rss_during = rss_bytes(process.popen.pid)

            def timed_get(_: int) -> float:
                started = time.perf_counter()
                users.GetUser(users_pb2.GetUserRequest(user_id=user_id), timeout=5)
                return time.perf_counter() - started

            with ThreadPoolExecutor(max_workers=4) as pool:
                latencies = sorted(pool.map(timed_get, range(200)))

        # The budget, passed by at most the reservations of the streams let in at once (2):
        # 3 pages each for ListUsersChunked, the most of the three kinds.
        page = (PAD + 100) * 1000
        assert max(held) <= BUDGET + 2 * 3 * page, f"held up to {max(held) / 2**20:.1f} MiB"
        assert max(held) >= BUDGET * 0.5, "the stalled streams should have filled the budget"
        # 300 such streams took 4 GB before the budget; now about twice the budget (see stream_memory.py).
        growth = rss_during - rss_before
        assert growth < 6 * BUDGET, f"RSS grew {growth / 2**20:.0f} MiB"
        p99 = statistics.quantiles(latencies, n=100)[98]
        assert p99 < 1.0, f"GetUser p99 {p99:.3f}s with 300 stalled streams"

        # Cancelled, they hold nothing; and what they held is free for a reader that reads.
        assert wait_for(lambda: metric("memstore_stream_held_bytes") == 0, 30), metric(
            "memstore_stream_held_bytes"
        )
        exported = users.ExportUsers(users_pb2.ExportUsersRequest(), timeout=TIMEOUT)
        lines = sum(message.json_lines.count("\n") for message in exported)
        assert lines == len(large_users) + 1
        assert process.popen.poll() is None


def _read_all_three(target: str) -> tuple[int, int, int]:
    """Users read to the end through ListUsersChunked, ExportUsers and a WatchUsers snapshot."""
    with grpc.insecure_channel(target) as channel:
        stub = users_pb2_grpc.UserServiceStub(channel)
        chunked = sum(
            len(chunk.users)
            for chunk in stub.ListUsersChunked(users_pb2.ListUsersChunkedRequest(chunk_size=700), timeout=60)
        )
        exported = sum(
            message.json_lines.count("\n")
            for message in stub.ExportUsers(users_pb2.ExportUsersRequest(), timeout=60)
        )
        watch = stub.WatchUsers(users_pb2.WatchUsersRequest(send_initial=True), timeout=60)
        snapshot = 0
        for message in watch:
            snapshot += len(message.events)
            if message.initial_complete:
                break
        watch.cancel()
    return chunked, exported, snapshot


def test_many_readers_on_a_budget_smaller_than_a_page_all_finish(
    start_server: Callable[[Settings], RunningServer], large_users: list[int], db: peewee.Database
) -> None:
    """Every stream holds more than the budget, so they take turns; none waits for good, and
    when all are done nothing is counted as held."""
    server = start_server(Settings(listen="127.0.0.1:0", db_pool_size=POOL, stream_memory=1024))
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: _read_all_three(server.target), range(8)))
    with db.connection_context():
        (total,) = db.execute_sql("SELECT count(*) FROM users").fetchone()
    assert total >= len(large_users)
    assert results == [(total, total, total)] * 8
    memory = server.handle.streams.memory
    assert wait_for(lambda: memory.held == 0, 10), memory.held


@pytest.mark.parametrize("budget", [0, -1])
def test_a_budget_below_one_byte_is_refused_at_start(budget: int) -> None:
    with pytest.raises(ConfigError, match="--stream-memory / MEMSTORE_STREAM_MEMORY must be at least 1"):
        Settings(stream_memory=budget)
