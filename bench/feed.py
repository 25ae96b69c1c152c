"""The change feed's figures: event latency, keeping up with writers, idle watchers' cost.

Each is measured against a same-run baseline on a memstore server running in a process
of its own (run.py passes its server; alone, this script starts one on the database
it is given):

- event latency: commit (the event's commit_time, taken in the committing transaction on
  the same machine's clock) to a watcher receiving it, p50 and p99, against the CreateUser
  round trip p50 of the very creates that made the events;
- keeping up: events/s a watcher receives while 8 writers (a process of their own) create
  users as fast as they can, against their create rate;
- idle watchers: the server process's CPU time over an interval with 100 idle watchers
  open, as a share of one core, against the same interval with none.

    .venv/bin/python bench/feed.py --database-url postgresql://...   # small sizes
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from harness import free_port, log, server_process
from memstore.v1 import users_pb2, users_pb2_grpc

WRITERS = 8
IDLE_WATCHERS = 100


@dataclass(frozen=True)
class Latency:
    event_p50_ms: float
    event_p99_ms: float
    create_p50_ms: float


@dataclass(frozen=True)
class KeepingUp:
    create_rate: float
    event_rate: float


@dataclass(frozen=True)
class IdleCost:
    watchers_core_share: float
    idle_core_share: float


def _percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def _first(call: grpc.aio.UnaryStreamCall) -> None:  # type: ignore[type-arg]
    await call.read()


async def _messages(call: grpc.aio.UnaryStreamCall) -> AsyncIterator[users_pb2.WatchUsersResponse]:  # type: ignore[type-arg]
    """The rest of a stream whose first message was read (grpc.aio allows no iterator after read)."""
    while True:
        message = await call.read()
        if not isinstance(message, users_pb2.WatchUsersResponse):  # grpc.aio.EOF: the stream ended
            return
        yield message


async def latency(target: str, creates: int) -> Latency:
    """``creates`` sequential CreateUsers with one watcher open: each event's commit-to-receipt
    time, and each create's round trip."""
    prefix = f"lat-{uuid.uuid4().hex[:8]}"
    received: dict[str, float] = {}
    committed: dict[str, float] = {}
    async with grpc.aio.insecure_channel(target) as channel:
        stub = users_pb2_grpc.UserServiceStub(channel)
        watch = stub.WatchUsers(users_pb2.WatchUsersRequest())
        await _first(watch)

        async def consume() -> None:
            async for message in _messages(watch):
                now = time.time()
                for event in message.events:
                    if event.user.user_id.startswith(prefix):
                        received[event.user.user_id] = now
                        committed[event.user.user_id] = event.commit_time.ToMicroseconds() / 1e6

        consumer = asyncio.ensure_future(consume())
        round_trips = []
        for number in range(creates):
            started = time.perf_counter()
            await stub.CreateUser(users_pb2.CreateUserRequest(user_id=f"{prefix}-{number}"))
            round_trips.append(time.perf_counter() - started)
            await asyncio.sleep(0.005)  # one at a time: latency, not throughput
        deadline = time.monotonic() + 30
        while len(received) < creates and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        consumer.cancel()
        watch.cancel()
    delays = [received[key] - committed[key] for key in received]
    return Latency(
        event_p50_ms=statistics.median(delays) * 1000,
        event_p99_ms=_percentile(delays, 0.99) * 1000,
        create_p50_ms=statistics.median(round_trips) * 1000,
    )


async def _write(target: str, prefix: str, seconds: float) -> tuple[int, float]:
    """``WRITERS`` closed-loop CreateUser callers for ``seconds``: how many, and how long."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = users_pb2_grpc.UserServiceStub(channel)
        count = 0
        stop_at = time.monotonic() + seconds

        async def writer(number: int) -> None:
            nonlocal count
            serial = 0
            while time.monotonic() < stop_at:
                await stub.CreateUser(users_pb2.CreateUserRequest(user_id=f"{prefix}-{number}-{serial}"))
                serial += 1
                count += 1

        started = time.monotonic()
        await asyncio.gather(*(writer(number) for number in range(WRITERS)))
        return count, time.monotonic() - started


def writers_main(target: str, prefix: str, seconds: float) -> None:
    count, elapsed = asyncio.run(_write(target, prefix, seconds))
    print(json.dumps({"count": count, "seconds": elapsed}), flush=True)


async def keeping_up(target: str, seconds: float) -> KeepingUp:
    """Writers in a process of their own; one watcher here counts their events as they come."""
    prefix = f"up-{uuid.uuid4().hex[:8]}"
    times: list[float] = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = users_pb2_grpc.UserServiceStub(channel)
        watch = stub.WatchUsers(users_pb2.WatchUsersRequest())
        await _first(watch)

        async def consume() -> None:
            async for message in _messages(watch):
                now = time.monotonic()
                times.extend(now for event in message.events if event.user.user_id.startswith(prefix))

        consumer = asyncio.ensure_future(consume())
        command = [sys.executable, __file__, "--writers", target, prefix, str(seconds)]
        process = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)
        output, _ = await process.communicate()
        written = json.loads(output)
        deadline = time.monotonic() + 60
        while len(times) < written["count"] and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        consumer.cancel()
        watch.cancel()
    # The watcher's rate over its own span, first of the writers' events to the last.
    span = max(times[-1] - times[0], 1e-9) if len(times) > 1 else float("inf")
    return KeepingUp(create_rate=written["count"] / written["seconds"], event_rate=len(times) / span)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


async def idle_cost(target: str, pid: int, seconds: float) -> IdleCost:
    """The server's CPU share with no watcher, then with IDLE_WATCHERS idle ones."""
    before = _cpu_seconds(pid)
    await asyncio.sleep(seconds)
    idle = (_cpu_seconds(pid) - before) / seconds
    async with grpc.aio.insecure_channel(target) as channel:
        stub = users_pb2_grpc.UserServiceStub(channel)
        calls = [stub.WatchUsers(users_pb2.WatchUsersRequest()) for _ in range(IDLE_WATCHERS)]
        await asyncio.gather(*(_first(call) for call in calls))

        async def drain(call: grpc.aio.UnaryStreamCall) -> None:  # type: ignore[type-arg]
            async for _ in _messages(call):
                pass

        readers = [asyncio.ensure_future(drain(call)) for call in calls]
        await asyncio.sleep(1)  # past the start-up of the streams
        before = _cpu_seconds(pid)
        await asyncio.sleep(seconds)
        watched = (_cpu_seconds(pid) - before) / seconds
        for reader in readers:
            reader.cancel()
        for call in calls:
            call.cancel()
    return IdleCost(watchers_core_share=watched, idle_core_share=idle)


def _server_command(url: str, target: str) -> list[str]:
    script = Path(sys.executable).with_name("memstore-server")
    return [str(script), "serve", "--listen", target, "--database-url", url]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--database-url", help="a migrated (or empty) database for the server")
    parser.add_argument("--creates", type=int, default=300, help="sequential creates for the latency")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of the writers' and idle runs")
    parser.add_argument("--writers", nargs=3, metavar=("TARGET", "PREFIX", "SECONDS"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.writers:
        target, prefix, seconds = args.writers
        writers_main(target, prefix, float(seconds))
        return
    if not args.database_url:
        raise SystemExit("--database-url is required")
    target = f"127.0.0.1:{free_port()}"
    with tempfile.TemporaryDirectory() as work:
        log_file = Path(work) / "memstore.log"
        with server_process(_server_command(args.database_url, target), target, log_file) as server:
            log("latency")
            measured = asyncio.run(latency(target, args.creates))
            log("keeping up with writers")
            kept = asyncio.run(keeping_up(target, args.seconds))
            log("idle watchers")
            idle = asyncio.run(idle_cost(target, server.pid, args.seconds))
    ratio = measured.event_p50_ms / measured.create_p50_ms
    print(
        f"event latency p50 {measured.event_p50_ms:.2f} ms, p99 {measured.event_p99_ms:.2f} ms; "
        f"CreateUser p50 {measured.create_p50_ms:.2f} ms; ratio p50 {ratio:.2f} (target <= 3)"
    )
    print(
        f"{WRITERS} writers: {kept.create_rate:.0f} creates/s; watcher {kept.event_rate:.0f} events/s; "
        f"ratio {kept.event_rate / kept.create_rate:.2f} (target >= 0.9)"
    )
    print(
        f"{IDLE_WATCHERS} idle watchers: server {idle.watchers_core_share * 100:.2f}% of a core; "
        f"with none {idle.idle_core_share * 100:.2f}% (target < 5%)"
    )


if __name__ == "__main__":
    main()
