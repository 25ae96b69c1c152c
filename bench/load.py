"""Load generators for the benchmark: closed-loop gRPC clients in processes of their own.

Each load process runs grpc.aio with a fixed number of calls in flight over one
channel, sending pre-serialized requests through a raw (bytes in, bytes out)
method, so the client spends as little CPU as it can on a machine it shares with
the server and PostgreSQL. Results are requests/s and latency percentiles.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.queues import Queue

import grpc
import grpc.aio
from memstore_server import wire

RequestMaker = Callable[[random.Random, int], bytes]


@dataclass(frozen=True)
class LoadResult:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int


@dataclass(frozen=True)
class GetUserRequests:
    """GetUserRequest bytes for a random existing user (ids user-1 .. user-N); picklable for spawn."""

    user_count: int

    def __call__(self, rng: random.Random, sequence: int) -> bytes:
        return wire.length_delimited(1, f"user-{rng.randint(1, self.user_count)}".encode())


@dataclass(frozen=True)
class CreateUserRequests:
    """CreateUserRequest bytes with a new user_id every call and the benchmark's usual fields."""

    prefix: str

    def __call__(self, rng: random.Random, sequence: int) -> bytes:
        user_id = f"{self.prefix}-{rng.getrandbits(32):08x}-{sequence}"
        return (
            wire.length_delimited(1, user_id.encode())
            + wire.length_delimited(2, f"{user_id}@example.com".encode())
            + wire.length_delimited(3, b"First")
            + wire.length_delimited(4, b"Last")
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
    latencies = sorted(latency for _, _, batch in collected for latency in batch)
    if not latencies:
        return LoadResult(0.0, float("nan"), float("nan"), sum(e for _, e, _ in collected))
    return LoadResult(
        requests_per_second=completed / seconds,
        p50_ms=statistics.median(latencies) * 1000,
        p99_ms=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        errors=sum(e for _, e, _ in collected),
    )
