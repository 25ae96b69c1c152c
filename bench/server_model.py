"""Which gRPC server model should memstore use? Decide by measurement, not by taste.

memstore serves with a synchronous ``grpc.server`` on a thread pool (model "sync",
the real server from ``memstore_server.app.create_server``). The alternative is a
``grpc.aio`` server whose handlers hand the blocking psycopg2 store to a thread pool
(model "aio", defined here only, as bench code). This script runs both against the
same embedded PostgreSQL and the same data and prints, side by side:

* GetUser requests/s and p50/p99 latency under a closed-loop load (64 calls in
  flight over one channel, random existing users), from a separate process;
* ListUsersChunked users/s: one client streams the whole table, 1000 per message.

Each server runs in its own ``spawn``-ed process, so neither shares a GIL with the
load generator. Both servers are up for the whole run and the runs are
interleaved (sync, aio, then aio, sync, ...), so drift on a shared, noisy machine
hits both models alike. Each figure is the median of the runs, with min and max.

    .venv/bin/python bench/server_model.py            # 100_000 users, 5 s per load run
    .venv/bin/python bench/server_model.py --quick    # 20_000 users, 3 s per load run
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import multiprocessing
import os
import queue
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass
from multiprocessing.context import SpawnContext, SpawnProcess
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import peewee
from memstore.v1 import users_pb2, users_pb2_grpc
from memstore_server import wire
from memstore_server.app import USER_SERVICE, add_service, create_server
from memstore_server.config import Settings
from memstore_server.database import open_database
from memstore_server.embedded import EmbeddedPostgres
from memstore_server.errors import ServiceError
from memstore_server.migrations import migrate
from memstore_server.models import database_proxy
from memstore_server.store.users import Chunk, UserStore
from memstore_server.validation import RequestChecker

MODELS = ("sync", "aio")
POOL_SIZE = 16
POOL_TIMEOUT = 5.0
EXECUTOR_THREADS = 16
CHUNK_SIZE = 1000
WARMUP_SECONDS = 1.0
CALL_TIMEOUT_SECONDS = 30.0
STREAM_TIMEOUT_SECONDS = 900.0
START_TIMEOUT_SECONDS = 120.0
# Clients take messages of any size; the aio server binds like create_server does.
CLIENT_OPTIONS: list[tuple[str, int | str]] = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
SERVER_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.max_receive_message_length", Settings().max_message_bytes),
    ("grpc.so_reuseport", 0),
]

_LOAD_USERS = """
INSERT INTO users (user_id, email, first_name, last_name, metadata)
SELECT
    'user-' || n,
    lower(f.name) || '.' || lower(l.name) || n || '@example.com',
    f.name,
    l.name,
    jsonb_build_object(
        'plan', (ARRAY['free', 'pro', 'team'])[1 + mod(n, 3)],
        'n', n,
        'tags', jsonb_build_array('a', 'b')
    )
FROM generate_series(1, %s) AS n
CROSS JOIN LATERAL (
    SELECT (ARRAY['Ada', 'Grace', 'Alan', 'Edsger', 'Barbara', 'Donald', 'Frances', 'Ken'])[1 + mod(n, 8)]
) AS f (name)
CROSS JOIN LATERAL (
    SELECT (ARRAY['Lovelace', 'Hopper', 'Turing', 'Dijkstra', 'Liskov', 'Knuth', 'Allen'])[1 + mod(n, 7)]
) AS l (name)
"""


# --------------------------------------------------------------------------- servers


def _open_child_database(url: str) -> peewee.Database:
    logging.basicConfig(level=logging.WARNING, format="%(processName)s %(levelname)s %(name)s: %(message)s")
    db: peewee.Database = open_database(url, pool_size=POOL_SIZE, pool_timeout=POOL_TIMEOUT)
    return db


def serve_sync(url: str, ports: Queue[int]) -> None:
    """Child process, model "sync": the real server, as ``memstore-server serve`` builds it."""
    db = _open_child_database(url)
    server, port, _health, _database_health = create_server(Settings(listen="127.0.0.1:0"), db)
    server.start()
    ports.put(port)
    server.wait_for_termination()


class AioUserServicer(users_pb2_grpc.UserServiceServicer):
    """GetUser and ListUsersChunked on grpc.aio, running the blocking store in a thread pool.

    Validation and error codes follow ``memstore_server.servicers.users``; the
    interceptors (access log, error boundary) of the real server are left out.
    """

    def __init__(self, store: UserStore, executor: futures.ThreadPoolExecutor) -> None:
        self._store = store
        self._executor = executor

    async def GetUser(  # noqa: N802 - gRPC method names
        self,
        request: users_pb2.GetUserRequest,
        context: grpc.aio.ServicerContext[users_pb2.GetUserRequest, users_pb2.GetUserResponse],
    ) -> bytes:
        check = RequestChecker()
        user_id = check.identifier("user_id", request.user_id)
        loop = asyncio.get_running_loop()
        try:
            check.raise_if_any()
            user = await loop.run_in_executor(self._executor, self._store.get, user_id)
        except ServiceError as error:
            await context.abort(error.code, error.message)
        return wire.length_delimited(1, user)  # a serialized GetUserResponse, as the real server sends

    async def ListUsersChunked(  # noqa: N802
        self,
        request: users_pb2.ListUsersChunkedRequest,
        context: grpc.aio.ServicerContext[
            users_pb2.ListUsersChunkedRequest, users_pb2.ListUsersChunkedResponse
        ],
    ) -> AsyncIterator[bytes]:
        check = RequestChecker()
        chunk_size = check.page_size("chunk_size", request.chunk_size)
        cursor = check.cursor("cursor", request.cursor)
        loop = asyncio.get_running_loop()
        try:
            check.raise_if_any()
            chunks = self._store.chunks(cursor, chunk_size)
            while True:
                # One page per executor call: the generator queries, then hands back one message.
                chunk = await loop.run_in_executor(self._executor, _next_chunk, chunks)
                if chunk is None:
                    return
                yield chunk.payload
        except ServiceError as error:
            await context.abort(error.code, error.message)


def _next_chunk(chunks: Iterator[Chunk]) -> Chunk | None:
    return next(chunks, None)


async def _serve_aio(url: str, ports: Queue[int]) -> None:
    db = _open_child_database(url)
    database_proxy.initialize(db)
    executor = futures.ThreadPoolExecutor(max_workers=EXECUTOR_THREADS, thread_name_prefix="store")
    server = grpc.aio.server(options=SERVER_OPTIONS)
    add_service(server, USER_SERVICE, AioUserServicer(UserStore(db), executor))  # type: ignore[arg-type]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    ports.put(port)
    await server.wait_for_termination()


def serve_aio(url: str, ports: Queue[int]) -> None:
    """Child process, model "aio": grpc.aio with the blocking store in a ThreadPoolExecutor."""
    asyncio.run(_serve_aio(url, ports))


SERVERS: dict[str, Callable[[str, Queue[int]], None]] = {"sync": serve_sync, "aio": serve_aio}


# --------------------------------------------------------------------------- load


@dataclass(frozen=True)
class LoadResult:
    completed: int
    errors: int
    window: float
    latencies_ms: list[float]


@dataclass(frozen=True)
class LoadSpec:
    """One GetUser load process: where, over which ids, how hard and how long."""

    port: int
    users: int
    inflight: int
    seconds: float
    seed: int


async def _get_user_load(spec: LoadSpec, barrier: Barrier) -> LoadResult:
    rng = random.Random(spec.seed)
    latencies: list[float] = []
    errors = 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{spec.port}", options=CLIENT_OPTIONS) as channel:
        await channel.channel_ready()
        stub = users_pb2_grpc.UserServiceStub(channel)
        barrier.wait()  # every load process starts its warm-up together
        measure_from = time.perf_counter() + WARMUP_SECONDS
        measure_until = measure_from + spec.seconds

        async def worker() -> None:
            nonlocal errors
            while (started := time.perf_counter()) < measure_until:
                request = users_pb2.GetUserRequest(user_id=f"user-{rng.randint(1, spec.users)}")
                try:
                    await stub.GetUser(request, timeout=CALL_TIMEOUT_SECONDS)
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                finished = time.perf_counter()
                if measure_from <= started and finished <= measure_until:
                    latencies.append((finished - started) * 1000)

        await asyncio.gather(*(worker() for _ in range(spec.inflight)))
    return LoadResult(len(latencies), errors, spec.seconds, latencies)


def get_user_load(
    spec: LoadSpec, barrier: Barrier, results: Queue[tuple[int, int, float, list[float]]]
) -> None:
    """Child process: a closed loop of ``spec.inflight`` GetUser calls on one grpc.aio channel."""
    result = asyncio.run(_get_user_load(spec, barrier))
    # A plain tuple: classes of a spawned child's main module do not unpickle in the parent.
    results.put((result.completed, result.errors, result.window, result.latencies_ms))


def stream_all_users(port: int) -> tuple[int, float]:
    """Stream the whole table once, parsing every message; return (users, seconds)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=CLIENT_OPTIONS) as channel:
        grpc.channel_ready_future(channel).result(timeout=START_TIMEOUT_SECONDS)
        stub = users_pb2_grpc.UserServiceStub(channel)
        count = 0
        started = time.perf_counter()
        request = users_pb2.ListUsersChunkedRequest(chunk_size=CHUNK_SIZE)
        for message in stub.ListUsersChunked(request, timeout=STREAM_TIMEOUT_SECONDS):
            count += len(message.users)
        return count, time.perf_counter() - started


# --------------------------------------------------------------------------- orchestration


def stop_process(process: SpawnProcess) -> None:
    """Stop one child we started, by its own handle: terminate, then kill if it lingers."""
    if process.is_alive():
        process.terminate()
    process.join(10)
    if process.is_alive():
        process.kill()
        process.join(10)


def load_users(db: peewee.Database, users: int) -> None:
    with db.connection_context():
        with db.atomic():
            db.execute_sql(_LOAD_USERS, (users,))
        db.execute_sql("ANALYZE users")
        (count,) = db.execute_sql("SELECT count(*) FROM users").fetchone()
    if count != users:
        raise RuntimeError(f"loaded {count} users, expected {users}")


def start_server(ctx: SpawnContext, model: str, url: str, children: list[SpawnProcess]) -> int:
    ports: Queue[int] = ctx.Queue()
    process = ctx.Process(target=SERVERS[model], args=(url, ports), name=f"server-{model}", daemon=True)
    process.start()
    children.append(process)
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while True:
        try:
            port: int = ports.get(timeout=1)
        except queue.Empty:
            if not process.is_alive():
                raise RuntimeError(f"the {model} server exited with code {process.exitcode}") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {model} server did not start in time") from None
            continue
        return port


def run_get_user(ctx: SpawnContext, port: int, args: argparse.Namespace, seed: int) -> LoadResult:
    procs: int = args.load_procs
    results: Queue[tuple[int, int, float, list[float]]] = ctx.Queue()
    barrier = ctx.Barrier(procs)
    loaders: list[SpawnProcess] = []
    try:
        for index in range(procs):
            inflight = args.inflight // procs + (1 if index < args.inflight % procs else 0)
            loader = ctx.Process(
                target=get_user_load,
                args=(
                    LoadSpec(port, args.users, inflight, args.seconds, seed * 100 + index),
                    barrier,
                    results,
                ),
                name=f"load-{index}",
                daemon=True,
            )
            loader.start()
            loaders.append(loader)
        parts = [
            LoadResult(
                *results.get(
                    timeout=START_TIMEOUT_SECONDS + WARMUP_SECONDS + args.seconds + CALL_TIMEOUT_SECONDS
                )
            )
            for _ in loaders
        ]
    finally:
        for loader in loaders:
            stop_process(loader)
    latencies = [latency for part in parts for latency in part.latencies_ms]
    return LoadResult(
        sum(part.completed for part in parts),
        sum(part.errors for part in parts),
        statistics.mean(part.window for part in parts),
        latencies,
    )


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile; NaN when there are no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


FIGURES = (
    ("GetUser requests/s", "rps", "{:,.0f}"),
    ("GetUser p50 latency (ms)", "p50", "{:.2f}"),
    ("GetUser p99 latency (ms)", "p99", "{:.2f}"),
    ("ListUsersChunked users/s", "stream", "{:,.0f}"),
)


def summary(values: Sequence[float], fmt: str) -> str:
    return f"{fmt.format(statistics.median(values))} [{fmt.format(min(values))}-{fmt.format(max(values))}]"


def print_table(results: dict[str, dict[str, list[float]]], args: argparse.Namespace) -> None:
    print()
    print(
        f"memstore server models: {args.users:,} users, os.cpu_count()={os.cpu_count()}, "
        f"{args.runs} runs per figure (median [min-max])"
    )
    print(
        f"GetUser: {args.inflight} in flight, {args.load_procs} load process(es), "
        f"{WARMUP_SECONDS:.0f} s warm-up + {args.seconds:g} s; ListUsersChunked: chunk_size={CHUNK_SIZE}"
    )
    print(f"sync: grpc.server, ThreadPoolExecutor({Settings().max_workers}), pool {POOL_SIZE}")
    print(f"aio:  grpc.aio.server, store in ThreadPoolExecutor({EXECUTOR_THREADS}), pool {POOL_SIZE}")
    rows = [("figure", "sync", "aio", "aio/sync")]
    for title, key, fmt in FIGURES:
        sync, aio = results["sync"][key], results["aio"][key]
        ratio = statistics.median(aio) / statistics.median(sync)
        rows.append((title, summary(sync, fmt), summary(aio, fmt), f"{ratio:.2f}"))
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    for index, row in enumerate(rows):
        print(f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]:>{widths[3]}}")
        if index == 0:
            print("  ".join("-" * width for width in widths))


def measure(
    ctx: SpawnContext, ports: dict[str, int], args: argparse.Namespace
) -> dict[str, dict[str, list[float]]]:
    results: dict[str, dict[str, list[float]]] = {
        model: {key: [] for _title, key, _fmt in FIGURES} for model in MODELS
    }
    errors = dict.fromkeys(MODELS, 0)
    for model in MODELS:  # untimed: fills the caches and the connection pools
        stream_all_users(ports[model])
    for run in range(args.runs):
        # Alternate which model goes first so that drift on the machine hits both alike.
        for model in MODELS if run % 2 == 0 else MODELS[::-1]:
            load = run_get_user(ctx, ports[model], args, seed=run)
            errors[model] += load.errors
            rps = load.completed / load.window
            results[model]["rps"].append(rps)
            results[model]["p50"].append(percentile(load.latencies_ms, 0.50))
            results[model]["p99"].append(percentile(load.latencies_ms, 0.99))
            log(f"run {run + 1} {model:>4} GetUser: {rps:,.0f} req/s, {load.errors} errors")
    for run in range(args.runs):
        for model in MODELS if run % 2 == 0 else MODELS[::-1]:
            count, elapsed = stream_all_users(ports[model])
            if count != args.users:
                raise RuntimeError(f"{model}: streamed {count} users, expected {args.users}")
            results[model]["stream"].append(args.users / elapsed)
            log(f"run {run + 1} {model:>4} ListUsersChunked: {args.users / elapsed:,.0f} users/s")
    for model, count in errors.items():
        if count:
            log(f"WARNING: {count} GetUser calls failed on {model}")
    return results


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--users", type=int, default=None, help="users to load (default 100000)")
    parser.add_argument("--seconds", type=float, default=None, help="GetUser load per run (default 5)")
    parser.add_argument("--quick", action="store_true", help="20000 users, 3 s per run")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (default %(default)s)")
    parser.add_argument(
        "--inflight", type=int, default=64, help="GetUser calls in flight (default %(default)s)"
    )
    parser.add_argument(
        "--load-procs", type=int, default=1, help="GetUser load processes (default %(default)s)"
    )
    args = parser.parse_args(argv)
    if args.users is None:
        args.users = 20_000 if args.quick else 100_000
    if args.seconds is None:
        args.seconds = 3.0 if args.quick else 5.0
    if args.users < 1 or args.seconds <= 0 or args.runs < 1 or not 1 <= args.load_procs <= args.inflight:
        parser.error(
            "--users, --seconds, --runs and --inflight must be positive; 1 <= --load-procs <= --inflight"
        )
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    ctx = multiprocessing.get_context("spawn")
    tmpdir = Path(tempfile.mkdtemp(prefix="memstore-bench-"))
    embedded = EmbeddedPostgres(tmpdir)
    db: Any = None
    children: list[SpawnProcess] = []
    try:
        url = embedded.start()
        db = open_database(url, pool_size=POOL_SIZE, pool_timeout=POOL_TIMEOUT)
        migrate(db)
        started = time.perf_counter()
        load_users(db, args.users)
        log(f"loaded {args.users:,} users in {time.perf_counter() - started:.1f} s")
        db.close_all()
        ports = {model: start_server(ctx, model, url, children) for model in MODELS}
        log(f"servers up: {ports}")
        results = measure(ctx, ports, args)
        print_table(results, args)
    finally:
        try:
            for child in children:
                stop_process(child)
            if db is not None:
                db.close_all()
            embedded.stop()
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
