"""``make bench``: memstore's speed, each figure beside a baseline measured in the same run.

The machines are shared and noisy, so no figure stands alone: each is printed
with a baseline taken in the same run, on the same data, and the ratio between
them, and each is the median of several runs with the minimum and maximum.

    .venv/bin/python bench/run.py                 # 1,000,000 users (make bench)
    .venv/bin/python bench/run.py --quick         # 100,000 users, shorter runs (make bench-quick)
    .venv/bin/python bench/run.py --write BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import grpc
import peewee
import psycopg2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from memstore.v1 import users_pb2, users_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import CreateUserRequests, GetUserRequests, run_load
from memstore_server import wire
from memstore_server.database import open_database
from memstore_server.embedded import EmbeddedPostgres
from memstore_server.migrations import migrate
from memstore_server.store import user_messages

REPO = Path(__file__).resolve().parent.parent
NOTES = """
## What makes these figures

- Reads send stored bytes. Each user's serialized `User` message is kept in `users.message` and
  rewritten in the transaction of every change to the user, so GetUser, ListUsers and
  ListUsersChunked frame bytes from PostgreSQL into responses instead of building messages and
  `Struct`s in Python (building a `Struct` from a dict was the costliest step per user).
- Reads run SQL built once, on the raw pooled connection; writes go through the Peewee models.
- Peewee's pool checked every connection with a `SELECT 1` round trip before handing it out,
  which doubled the queries of a point read (measured: 198 us per GetUser store call, 125 us
  without it); memstore's pool pings only connections idle for more than 5 s.
- Streams read keyset pages (`WHERE id > cursor ORDER BY id LIMIT n`): the last page of the
  table costs what the first does, and the server holds one page at a time, so its memory does
  not grow with the table. The first message at the start of the table waits for the page after
  it too (to know whether it is the last), which is why it is slower than the one at the end.
- One Python process serves on one core; `--workers N` runs N processes on one port
  (SO_REUSEPORT), each with its own pool.
- The sync thread-pool server was chosen over grpc.aio by `make bench-model` (see the README).
"""
GET_USER = "/memstore.v1.UserService/GetUser"
CREATE_USER = "/memstore.v1.UserService/CreateUser"
CHUNK = 1000


@dataclass
class Figure:
    name: str
    baseline_name: str
    values: list[float] = field(default_factory=list)
    baselines: list[float] = field(default_factory=list)
    target: str = ""
    note: str = ""

    @property
    def ratio(self) -> float:
        return statistics.median(self.values) / statistics.median(self.baselines)


def spread(values: Sequence[float]) -> str:
    return f"{statistics.median(values):,.1f} [{min(values):,.1f}-{max(values):,.1f}]"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def load_users(db: peewee.Database, count: int) -> None:
    """``count`` users with realistic fields and small metadata, then their stored messages."""
    started = time.perf_counter()
    with db.connection_context():
        for first in range(1, count + 1, 200_000):
            last = min(count, first + 199_999)
            db.execute_sql(
                "INSERT INTO users (user_id, email, first_name, last_name, metadata) "
                "SELECT 'user-' || g, 'user' || g || '@example.com', 'First' || g, 'Last' || g, "
                "jsonb_build_object('plan', (ARRAY['free', 'pro', 'team'])[1 + g %% 3], 'n', g, "
                "'tags', jsonb_build_array('a', 'b')) FROM generate_series(%s, %s) AS g",
                (first, last),
            )
        with db.atomic():
            user_messages.refill(db)
        db.execute_sql("VACUUM ANALYZE users")
    print(f"loaded {count:,} users in {time.perf_counter() - started:.0f}s", flush=True)


@contextmanager
def server_process(command: Sequence[str], target: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A server child process, healthy when yielded, always stopped (SIGTERM, then kill) after."""
    with log.open("wb") as out:
        process = subprocess.Popen(list(command), stdout=out, stderr=out, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        with grpc.insecure_channel(target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"server exited early; see {log}")
                try:
                    if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                        break
                except grpc.RpcError:
                    if time.monotonic() > deadline:
                        raise
                time.sleep(0.2)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def memstore_command(url: str, target: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "memstore_server",
        "serve",
        "--database-url",
        url,
        "--listen",
        target,
        *extra,
    ]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def stream_all(target: str) -> tuple[float, int]:
    """Users/s of one client receiving and parsing the whole table in chunks of 1000."""
    with grpc.insecure_channel(target) as channel:
        stub = users_pb2_grpc.UserServiceStub(channel)
        started = time.perf_counter()
        count = 0
        for message in stub.ListUsersChunked(
            users_pb2.ListUsersChunkedRequest(chunk_size=CHUNK), timeout=3600
        ):
            count += len(message.users)
        elapsed = time.perf_counter() - started
    return count / elapsed, count


def raw_scan(url: str) -> float:
    """Rows/s of a plain psycopg2 keyset scan of the same table, cheap column shapes, in-process."""
    connection = psycopg2.connect(url)
    try:
        cursor = connection.cursor()
        started = time.perf_counter()
        after, count = 0, 0
        while True:
            cursor.execute(
                "SELECT id, uuid::text, user_id, email, first_name, last_name, metadata::text, "
                "session_count, (extract(epoch FROM created_at) * 1000000)::bigint, "
                "(extract(epoch FROM updated_at) * 1000000)::bigint "
                "FROM users WHERE id > %s ORDER BY id LIMIT %s",
                (after, CHUNK),
            )
            rows = cursor.fetchall()
            if not rows:
                break
            count += len(rows)
            after = rows[-1][0]
        return count / (time.perf_counter() - started)
    finally:
        connection.close()


def page_seconds(target: str, cursor: int, samples: int = 20) -> float:
    """Median seconds of one ListUsers page of 1000 starting after ``cursor``."""
    with grpc.insecure_channel(target) as channel:
        stub = users_pb2_grpc.UserServiceStub(channel)
        times = []
        for _ in range(samples):
            started = time.perf_counter()
            stub.ListUsers(users_pb2.ListUsersRequest(limit=CHUNK, cursor=cursor), timeout=60)
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def first_chunk_seconds(target: str, cursor: int, samples: int = 20) -> float:
    """Median seconds until the first ListUsersChunked message after ``cursor`` arrives."""
    with grpc.insecure_channel(target) as channel:
        stub = users_pb2_grpc.UserServiceStub(channel)
        times = []
        for _ in range(samples):
            started = time.perf_counter()
            stream = stub.ListUsersChunked(users_pb2.ListUsersChunkedRequest(chunk_size=CHUNK, cursor=cursor))
            next(stream)
            times.append(time.perf_counter() - started)
            stream.cancel()
    return statistics.median(times)


def h2load_rate(target: str, seconds: float, body: Path) -> float:
    """GetUser requests/s under h2load (16 connections x 4 streams), one fixed request."""
    result = subprocess.run(
        [
            "h2load",
            "-D",
            f"{seconds:g}",
            "--warm-up-time=1",
            "-c",
            "16",
            "-m",
            "4",
            "-t",
            "1",
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            "-d",
            str(body),
            f"http://{target}{GET_USER}",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    )
    match = re.search(r"finished in [\d.]+s, ([\d.]+) req/s", result.stdout)
    if match is None:
        raise RuntimeError(f"unexpected h2load output:\n{result.stdout}")
    return float(match.group(1))


def grpc_body(message: bytes, folder: Path) -> Path:
    """``message`` framed as one gRPC request body (uncompressed flag, 4-byte length), in a file."""
    path = folder / "get-user.body"
    path.write_bytes(b"\x00" + len(message).to_bytes(4, "big") + message)
    return path


def get_user_rates(
    command: Sequence[str],
    target: str,
    *,
    log: Path,
    users: int,
    seconds: float,
    runs: int,
    processes: int = 1,
) -> list[float]:
    """GetUser requests/s of ``runs`` load runs against the server ``command`` starts, after a warm-up."""
    concurrency = 64 // processes
    with server_process(command, target, log):
        run_load(target, GET_USER, GetUserRequests(users), seconds=1, warmup=0.5, processes=processes)
        return [
            run_load(
                target,
                GET_USER,
                GetUserRequests(users),
                seconds=seconds,
                processes=processes,
                concurrency=concurrency,
            ).requests_per_second
            for _ in range(runs)
        ]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--users", type=int, default=None, help="users to load (default 1,000,000)")
    parser.add_argument("--seconds", type=float, default=None, help="length of each load run (default 5)")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (at least 3)")
    parser.add_argument("--quick", action="store_true", help="100,000 users and 2 s load runs")
    parser.add_argument("--write", type=Path, help="also write the results as Markdown to this file")
    args = parser.parse_args(argv)
    users = args.users or (100_000 if args.quick else 1_000_000)
    seconds = args.seconds or (2.0 if args.quick else 5.0)
    runs = max(3, args.runs)

    work = Path(tempfile.mkdtemp(prefix="memstore-bench-"))
    postgres = EmbeddedPostgres(work / "data")
    try:
        url = postgres.start()
        db = open_database(url, pool_size=4, pool_timeout=10)
        migrate(db)
        load_users(db, users)
        db.close_all()
        figures = measure(url, users, seconds, runs, work)
    finally:
        postgres.stop()
        shutil.rmtree(work, ignore_errors=True)
    report = render(figures, users, seconds, runs, " ".join(["bench/run.py", *(argv or sys.argv[1:])]))
    print(report)
    if args.write:
        args.write.write_text(report, encoding="utf-8")


def measure(url: str, users: int, seconds: float, runs: int, work: Path) -> list[Figure]:
    baseline_target = f"127.0.0.1:{free_port()}"
    baseline = [sys.executable, str(REPO / "bench" / "baseline_server.py"), "--listen", baseline_target]
    figures = measure_one_server(url, users, seconds, runs, work)
    get_user = figures[0]
    get_user.baselines = get_user_rates(
        baseline, baseline_target, log=work / "baseline.log", users=users, seconds=seconds, runs=runs
    )
    if shutil.which("h2load"):
        figures.insert(
            1, measure_h2load(url, baseline, baseline_target, seconds=seconds, runs=runs, work=work)
        )
    figures.append(measure_workers(url, users, seconds, runs, work))
    return figures


def measure_one_server(url: str, users: int, seconds: float, runs: int, work: Path) -> list[Figure]:
    """The figures taken on one single-process server: GetUser, streaming, paging, memory, CreateUser."""
    get_user = Figure(
        "GetUser requests/s (random users, 64 in flight)",
        "constant GetUserResponse, same stack, no database",
        target=">= 0.6",
    )
    latency: dict[str, list[float]] = {"p50": [], "p99": []}
    stream = Figure(
        "ListUsersChunked users/s, whole table, parsed by a client",
        "raw psycopg2 keyset scan rows/s, in-process",
        target=">= 0.5",
    )
    page = Figure(
        "ListUsers page of 1000 at the end of the table, ms", "the same page at the start", target="<= 1.5"
    )
    chunk = Figure(
        "first ListUsersChunked message at the end of the table, ms", "the same at the start", target="<= 1.5"
    )
    rss = Figure("server RSS after streaming every user, MB", "idle, after warm-up", target="< idle + 100 MB")
    create = Figure("CreateUser requests/s", "GetUser requests/s", target=">= 0.3")

    target = f"127.0.0.1:{free_port()}"
    with server_process(memstore_command(url, target), target, work / "memstore.log") as server:
        run_load(target, GET_USER, GetUserRequests(users), seconds=1, warmup=0.5)  # warm caches
        idle = rss_mb(server.pid)
        for _ in range(runs):
            result = run_load(target, GET_USER, GetUserRequests(users), seconds=seconds)
            get_user.values.append(result.requests_per_second)
            latency["p50"].append(result.p50_ms)
            latency["p99"].append(result.p99_ms)
        for _ in range(runs):
            rate, count = stream_all(target)
            assert count >= users, f"streamed {count} of {users} users"
            stream.values.append(rate)
            stream.baselines.append(raw_scan(url))
        rss.values.append(rss_mb(server.pid))
        rss.baselines.append(idle)
        last_start = users - CHUNK
        for _ in range(runs):
            page.values.append(page_seconds(target, last_start) * 1000)
            page.baselines.append(page_seconds(target, 0) * 1000)
            chunk.values.append(first_chunk_seconds(target, last_start) * 1000)
            chunk.baselines.append(first_chunk_seconds(target, 0) * 1000)
        for number in range(runs):
            created = run_load(target, CREATE_USER, CreateUserRequests(f"bench{number}"), seconds=seconds)
            create.values.append(created.requests_per_second)
        create.baselines = list(get_user.values)
    get_user.note = f"p50 {spread(latency['p50'])} ms, p99 {spread(latency['p99'])} ms"
    return [get_user, stream, page, chunk, rss, create]


def measure_h2load(
    url: str, baseline: Sequence[str], baseline_target: str, *, seconds: float, runs: int, work: Path
) -> Figure:
    """GetUser against the constant baseline again, driven by h2load, a load generator in C."""
    figure = Figure(
        "GetUser requests/s under h2load (16 connections x 4 streams, one user)",
        "constant GetUserResponse, same stack, no database",
        target=">= 0.6",
        note="the same request every time: h2load sends one body",
    )
    body = grpc_body(wire.length_delimited(1, b"user-1"), work)
    target = f"127.0.0.1:{free_port()}"
    with server_process(memstore_command(url, target), target, work / "h2load.log"):
        figure.values = [h2load_rate(target, seconds, body) for _ in range(runs)]
    with server_process(baseline, baseline_target, work / "baseline-h2load.log"):
        figure.baselines = [h2load_rate(baseline_target, seconds, body) for _ in range(runs)]
    return figure


def measure_workers(url: str, users: int, seconds: float, runs: int, work: Path) -> Figure:
    """GetUser with two worker processes against one.

    Python load generators take a core's worth of CPU themselves, which leaves two
    workers little to scale into on two cores; h2load, where installed, does not.
    """
    figure = Figure("GetUser requests/s, 2 server processes (--workers 2)", "1 process", target=">= 1.4")
    two_target, one_target = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    two = memstore_command(url, two_target, "--workers", "2")
    one = memstore_command(url, one_target)
    if shutil.which("h2load"):
        figure.note = "driven by h2load (16 connections x 4 streams, one user)"
        body = grpc_body(wire.length_delimited(1, b"user-1"), work)
        with server_process(two, two_target, work / "workers.log"):
            figure.values = [h2load_rate(two_target, seconds, body) for _ in range(runs)]
        with server_process(one, one_target, work / "one.log"):
            figure.baselines = [h2load_rate(one_target, seconds, body) for _ in range(runs)]
        return figure
    figure.note = "both driven by 2 Python load processes of 32 calls in flight"
    figure.values = get_user_rates(
        two, two_target, log=work / "workers.log", users=users, seconds=seconds, runs=runs, processes=2
    )
    figure.baselines = get_user_rates(
        one, one_target, log=work / "one.log", users=users, seconds=seconds, runs=runs, processes=2
    )
    return figure


def render(figures: list[Figure], users: int, seconds: float, runs: int, command: str) -> str:
    lines = [
        "# memstore benchmarks",
        "",
        f"- command: `{command}` (`make bench`; `make bench-quick` for a short run)",
        f"- when: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}; machine: {os.cpu_count()} cores, "
        "shared by the server, PostgreSQL (embedded, 18) and the load generators",
        f"- data: {users:,} users with small metadata objects; load runs of {seconds:g} s after 1 s "
        f"of warm-up; every figure is the median of {runs} runs, [min-max]",
        "- load: closed-loop Python grpc.aio clients in their own processes"
        + (
            "; and h2load (nghttp2-client) where installed"
            if shutil.which("h2load")
            else " (h2load not installed)"
        ),
        "",
        "| figure | value | baseline (same run) | baseline value | ratio | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for figure in figures:
        ratio = figure.ratio
        met = _met(figure, ratio)
        lines.append(
            f"| {figure.name} | {spread(figure.values)} | {figure.baseline_name} | "
            f"{spread(figure.baselines)} | {ratio:.2f} | {figure.target} | {'yes' if met else '**no**'} |"
        )
    notes = [f"- {figure.name}: {figure.note}" for figure in figures if figure.note]
    return "\n".join([*lines, "", *notes, NOTES])


def _met(figure: Figure, ratio: float) -> bool:
    if figure.target.startswith(">="):
        return ratio >= float(figure.target[2:])
    if figure.target.startswith("<="):
        return ratio <= float(figure.target[2:])
    return statistics.median(figure.values) < statistics.median(figure.baselines) + 100


if __name__ == "__main__":
    main()
