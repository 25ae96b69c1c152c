"""The benchmark's load: closed-loop Python clients, h2load, and one Python stream reader.

Python load processes run grpc.aio with a fixed number of calls in flight over one
channel, sending pre-serialized requests through a raw (bytes in, bytes out)
method, so the client spends as little CPU as it can on a machine it shares with
the server and PostgreSQL; they can vary the request (random users). h2load, a
load generator in C, costs the server's cores far less but sends one request body
over and over. The stream reader is the client a ListUsersChunked figure is about:
Python, reading and parsing every message. Results are requests/s and latency
percentiles, or users/s.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import random
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.queues import Queue
from pathlib import Path

import grpc
import grpc.aio
from framing import grpc_message, length_delimited
from memstore.v1 import users_pb2, users_pb2_grpc

RequestMaker = Callable[[random.Random, int], bytes]


@dataclass(frozen=True)
class LoadResult:
    """What one load run measured; latencies in milliseconds."""

    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int


@dataclass(frozen=True)
class GetUserRequests:
    """GetUserRequest bytes for a random existing user (ids user-1 .. user-N); picklable for spawn."""

    user_count: int

    def __call__(self, rng: random.Random, sequence: int) -> bytes:
        return length_delimited(1, f"user-{rng.randint(1, self.user_count)}".encode())


@dataclass(frozen=True)
class CreateUserRequests:
    """CreateUserRequest bytes with a new user_id every call and the benchmark's usual fields."""

    prefix: str

    def __call__(self, rng: random.Random, sequence: int) -> bytes:
        user_id = f"{self.prefix}-{rng.getrandbits(32):08x}-{sequence}"
        return (
            length_delimited(1, user_id.encode())
            + length_delimited(2, f"{user_id}@example.com".encode())
            + length_delimited(3, b"First")
            + length_delimited(4, b"Last")
        )


@dataclass(frozen=True)
class _Plan:
    """What one load process does; a single picklable argument for a spawned process."""

    target: str
    method: str
    make: RequestMaker
    seed: int
    concurrency: int
    warmup: float
    seconds: float


async def _drive(plan: _Plan) -> tuple[int, int, list[float]]:
    target, method, make, seed = plan.target, plan.method, plan.make, plan.seed
    concurrency, warmup, seconds = plan.concurrency, plan.warmup, plan.seconds
    rng = random.Random(seed)
    latencies: list[float] = []
    completed = errors = sequence = 0
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        started = time.perf_counter()
        measure_from = started + warmup
        stop_at = measure_from + seconds

        async def worker() -> None:
            nonlocal completed, errors, sequence
            while True:
                now = time.perf_counter()
                if now >= stop_at:
                    return
                sequence += 1
                request = make(rng, sequence)
                try:
                    await call(request, timeout=30)
                except grpc.aio.AioRpcError:
                    if now >= measure_from:
                        errors += 1
                    continue
                done = time.perf_counter()
                if now >= measure_from:
                    completed += 1
                    latencies.append(done - now)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return completed, errors, latencies


def _process(plan: _Plan, results: Queue[tuple[int, int, list[float]]]) -> None:
    results.put(asyncio.run(_drive(plan)))


def run_load(
    target: str,
    method: str,
    make: RequestMaker,
    *,
    seconds: float,
    warmup: float = 1.0,
    processes: int = 1,
    concurrency: int = 64,
    seed: int = 0,
) -> LoadResult:
    """Closed-loop load on ``method`` for ``seconds`` after ``warmup``, from ``processes`` processes."""
    context = multiprocessing.get_context("spawn")
    results: Queue[tuple[int, int, list[float]]] = context.Queue()
    workers = [
        context.Process(
            target=_process,
            args=(_Plan(target, method, make, seed + number, concurrency, warmup, seconds), results),
        )
        for number in range(processes)
    ]
    for worker in workers:
        worker.start()
    try:
        collected = [results.get(timeout=warmup + seconds + 120) for _ in workers]
    finally:
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.terminate()
                worker.join()
    completed = sum(count for count, _, _ in collected)
    errors = sum(error_count for _, error_count, _ in collected)
    latencies = [latency for _, _, batch in collected for latency in batch]
    return _result(completed / seconds, latencies, errors)


def _result(rate: float, latencies_seconds: Sequence[float], errors: int) -> LoadResult:
    ordered = sorted(latencies_seconds)
    return LoadResult(
        requests_per_second=rate if ordered else 0.0,
        p50_ms=percentile(ordered, 0.50) * 1000,
        p99_ms=percentile(ordered, 0.99) * 1000,
        errors=errors,
    )


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values; NaN when there are none."""
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


# --------------------------------------------------------------------------- h2load


@dataclass(frozen=True)
class Shape:
    """How h2load keeps its requests in flight: ``connections`` HTTP/2 connections x ``streams`` each."""

    connections: int
    streams: int

    def __str__(self) -> str:
        return f"{self.connections} connections x {self.streams} streams"


def have_h2load() -> bool:
    return shutil.which("h2load") is not None


def run_h2load(
    target: str,
    method: str,
    request: bytes,
    *,
    seconds: float,
    shape: Shape,
    folder: Path,
    warmup: float = 1.0,
) -> LoadResult:
    """Requests/s and latency percentiles of ``method`` under h2load, one thread, sending ``request``.

    h2load reads no gRPC status (a gRPC error is an HTTP 200), so check the server
    answers ``request`` properly before trusting the rate. Its per-request log
    covers the measured period only (not the warm-up), so the percentiles come from it.
    """
    body, log_file = folder / "h2load.body", folder / "h2load.log"
    body.write_bytes(grpc_message(request))
    result = subprocess.run(
        [
            "h2load",
            f"--duration={seconds:g}",
            f"--warm-up-time={warmup:g}",
            f"--clients={shape.connections}",
            f"--max-concurrent-streams={shape.streams}",
            "--threads=1",
            "--header=content-type: application/grpc",
            "--header=te: trailers",
            f"--data={body}",
            f"--log-file={log_file}",
            f"http://{target}{method}",
        ],
        capture_output=True,
        text=True,
        timeout=warmup + seconds + 60,
        check=True,
    )
    rate, failed = _h2load_summary(result.stdout)
    return _result(rate, _logged_latencies(log_file), failed)


def _h2load_summary(output: str) -> tuple[float, int]:
    """(requests/s, failed + errored requests) from h2load's report."""
    rate = re.search(r"finished in [\d.]+s, ([\d.]+) req/s", output)
    counts = re.search(r"(\d+) failed, (\d+) errored", output)
    if rate is None or counts is None:
        raise RuntimeError(f"unexpected h2load output:\n{output}")
    return float(rate.group(1)), int(counts.group(1)) + int(counts.group(2))


def _logged_latencies(log_file: Path) -> list[float]:
    """Seconds of every successful request in an h2load --log-file (start, status, microseconds)."""
    latencies = []
    for line in log_file.read_text().splitlines():
        _start, status, micros = line.split("\t")[:3]
        if status == "200":
            latencies.append(int(micros) / 1_000_000)
    return latencies


# --------------------------------------------------------------------------- streams


def stream_users(target: str, chunk_size: int = 1000) -> tuple[float, int]:
    """Users/s and users of one Python client reading the whole ListUsersChunked stream.

    The client keeps every message (``list``) and touches each one's users, so the
    figure includes what a real Python caller pays: receiving and parsing them all.
    """
    options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    with grpc.insecure_channel(target, options=options) as channel:
        grpc.channel_ready_future(channel).result(timeout=60)
        stub = users_pb2_grpc.UserServiceStub(channel)
        request = users_pb2.ListUsersChunkedRequest(chunk_size=chunk_size)
        started = time.perf_counter()
        chunks = list(stub.ListUsersChunked(request, timeout=3600))
        count = sum(len(chunk.users) for chunk in chunks)
        elapsed = time.perf_counter() - started
    return count / elapsed, count
