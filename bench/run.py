"""``make bench``: memstore's speed, each figure beside a baseline measured in the same run.

The machines are shared and noisy, so no figure stands alone: each is printed
with a baseline taken in the same run, on the same data, and the ratio between
them, and each is the median of several runs with the minimum and maximum. A
figure and its baseline are measured in alternation, with both servers up, so
drift on the machine hits both alike.

memstore runs as ``memstore-server serve`` with its default configuration (access
log at INFO included) plus a metrics endpoint, as it would be deployed. Its GetUser
baseline is the bare grpc.aio server of baseline_server.py: the figure says how
much of what Python gRPC alone allows memstore keeps.

    .venv/bin/python bench/run.py                 # 1,000,000 users (make bench)
    .venv/bin/python bench/run.py --quick         # 100,000 users, shorter runs (make bench-quick)
    .venv/bin/python bench/run.py --write BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import feed
import grpc
import peewee
import psycopg2
import psycopg2.extensions
import query
from cli_figures import measure_cli
from framing import length_delimited
from harness import (
    BENCH,
    baseline_command,
    check_get_user,
    free_port,
    local_target,
    log,
    server_process,
    spread,
)
from load import (
    CreateUserRequests,
    GetUserRequests,
    LoadResult,
    Shape,
    have_h2load,
    run_h2load,
    run_load,
    stream_users,
)
from memstore.v1 import users_pb2, users_pb2_grpc
from memstore_server.database import open_database
from memstore_server.embedded import EmbeddedPostgres
from memstore_server.migrations import migrate
from memstore_server.store import user_messages

NOTES = """
## What makes these figures

- Reads send stored bytes. Each user's serialized `User` message is kept in `users.message` and
  rewritten in the transaction of every change to the user, so GetUser, ListUsers and
  ListUsersChunked frame bytes from PostgreSQL into responses instead of building messages and
  `Struct`s in Python (building a `Struct` from a dict was the costliest step per user).
- A stream page is framed by PostgreSQL: one value per page, the tag, the length (a generated
  varint column) and the stored bytes of each user, read through `COPY ... (FORMAT binary)` so
  it is not hex-encoded on its way; the next page is always being fetched while one is sent.
- Streams read keyset pages (`WHERE id > cursor ORDER BY id LIMIT n`): the last page of the
  table costs what the first does, and the server holds one page at a time, so its memory does
  not grow with the table.
- GetUsers that arrive together are answered by one query (`coalescing.py`); the server's
  event loop is uvloop's.
- One Python process serves on one core and gRPC's own threads beside it; `--workers N` runs N
  processes on one port (SO_REUSEPORT), each with its own pool. On 2 cores shared with
  PostgreSQL and h2load, the bare server's own two-process figure is the ceiling.
- N memstore replicas behind a Kubernetes Service are N such processes on N machines; on this
  machine they would share its cores, as workers do, so the worker figures stand for both.
- The replica figures stream the whole table from a streaming replica made with
  `pg_basebackup` of the benchmark's PostgreSQL (`--read-database-url`), on the same machine:
  the primary's CPU is summed over its postmaster and every backend while the stream runs.
- h2load sends one request body over and over, so its GetUser figures read one user; the
  Python load generator's figure reads random users. `make bench-db-paths` compares the ways
  from grpc.aio to PostgreSQL on minimal servers.
"""
GET_USER = "/memstore.v1.UserService/GetUser"
CREATE_USER = "/memstore.v1.UserService/CreateUser"
CHUNK = 1000
# GetUser under h2load: 64 requests in flight on a few connections, as a handful of clients would.
GET_USER_SHAPE = Shape(connections=4, streams=16)
# The same 64 in flight on more connections: the kernel spreads connections (not requests)
# over SO_REUSEPORT workers, and 4 connections land 3 to 1 or 4 to 0 more often than not.
WORKERS_SHAPE = Shape(connections=16, streams=4)
# Environment variables that would change the server's configuration from its defaults.
_CONFIGURING = ("MEMSTORE_", "OTEL_", "PROMETHEUS_MULTIPROC_DIR")


@dataclass
class Figure:
    """One figure beside its same-run baseline; p99s (ms) only for request rates."""

    name: str
    baseline_name: str
    target: str
    values: list[float] = field(default_factory=list)
    baselines: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    baseline_p99: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def ratio(self) -> float:
        return statistics.median(self.values) / statistics.median(self.baselines)

    def add_value(self, result: LoadResult) -> None:
        self.values.append(result.requests_per_second)
        self.p99.append(result.p99_ms)

    def add_baseline(self, result: LoadResult) -> None:
        self.baselines.append(result.requests_per_second)
        self.baseline_p99.append(result.p99_ms)

    @property
    def met(self) -> bool:
        if self.target.startswith("value <"):
            return statistics.median(self.values) < float(self.target.removeprefix("value <"))
        if self.target.startswith(">="):
            return self.ratio >= float(self.target[2:])
        if self.target.startswith("<="):
            return self.ratio <= float(self.target[2:])
        return statistics.median(self.values) < statistics.median(self.baselines) + 100  # "< idle + 100 MB"


@dataclass(frozen=True)
class Run:
    """What every measurement of one bench run shares."""

    url: str
    users: int
    seconds: float
    runs: int
    work: Path


# One load run, returning what it measured.
Measurement = Callable[[], LoadResult]


def alternate(figure: Figure, runs: int, value: Measurement, baseline: Measurement) -> None:
    """``runs`` pairs of the figure's load run and its baseline's, the pair's order swapped each time."""
    steps = [(value, figure.add_value), (baseline, figure.add_baseline)]
    for number in range(runs):
        for measure_once, record in steps if number % 2 == 0 else steps[::-1]:
            record(measure_once())


# --------------------------------------------------------------------------- data and servers


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
                "'cohort', g %% 100, 'tags', jsonb_build_array('a', 'b')) FROM generate_series(%s, %s) AS g",
                (first, last),
            )
        with db.atomic():
            user_messages.refill(db)
        # The seed's change history (two records a user: the row, then its stored message) is
        # not what a watcher reads in these runs; a server would prune it with time as well.
        db.execute_sql("TRUNCATE user_changes")
        db.execute_sql("VACUUM ANALYZE users")
    log(f"loaded {count:,} users in {time.perf_counter() - started:.0f}s")


def memstore_command(url: str, target: str, *extra: str) -> list[str]:
    """``memstore-server serve`` with its defaults, a metrics endpoint and ``extra`` options."""
    script = Path(sys.executable).with_name("memstore-server")
    program = [str(script)] if script.exists() else [sys.executable, "-m", "memstore_server"]
    metrics = f"127.0.0.1:{free_port()}"
    return [*program, "serve", "--listen", target, "--database-url", url, "--metrics-listen", metrics, *extra]


def default_environment() -> dict[str, str]:
    """This environment without what would configure memstore, so it runs on its defaults."""
    return {name: value for name, value in os.environ.items() if not name.startswith(_CONFIGURING)}


@contextmanager
def memstore(run: Run, target: str, name: str, *extra: str) -> Iterator[subprocess.Popen[bytes]]:
    """A memstore server on ``target``, SERVING and answering GetUser when yielded."""
    command = memstore_command(run.url, target, *extra)
    with server_process(command, target, run.work / f"{name}.log", env=default_environment()) as process:
        check_get_user(target, "user-1")
        yield process


@contextmanager
def memstore_on(run: Run, url: str, target: str, name: str) -> Iterator[subprocess.Popen[bytes]]:
    """A memstore server on the database of ``url`` (which may be empty), SERVING when yielded."""
    command = memstore_command(url, target)
    with server_process(command, target, run.work / f"{name}.log", env=default_environment()) as process:
        yield process


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --------------------------------------------------------------------------- baselines of their own


def raw_scan(url: str) -> float:
    """Rows/s of a plain psycopg2 keyset scan of the same table, cheap column shapes, in-process.

    The least any Python reader of these rows can do: the columns as text or numbers
    PostgreSQL converts itself, pages of 1000, nothing built from them.
    """
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


# --------------------------------------------------------------------------- the figures


def h2load_get_user(run: Run, target: str, shape: Shape) -> Measurement:
    """One GetUser run under h2load against ``target``: always user-1, h2load sends one body."""
    request = length_delimited(1, b"user-1")
    return lambda: run_h2load(target, GET_USER, request, seconds=run.seconds, shape=shape, folder=run.work)


def python_get_user(run: Run, target: str) -> Measurement:
    """One GetUser run of the Python load generator against ``target``: random users, 64 in flight."""
    return lambda: run_load(target, GET_USER, GetUserRequests(run.users), seconds=run.seconds)


def measure_h2load(run: Run, memstore_target: str, bare_target: str) -> Figure:
    figure = Figure(
        f"GetUser requests/s under h2load ({GET_USER_SHAPE}, one user)",
        "bare grpc.aio server, constant response",
        target=">= 0.5",
    )
    alternate(
        figure,
        run.runs,
        h2load_get_user(run, memstore_target, GET_USER_SHAPE),
        h2load_get_user(run, bare_target, GET_USER_SHAPE),
    )
    return figure


def measure_python_load(run: Run, memstore_target: str, bare_target: str) -> Figure:
    figure = Figure(
        "GetUser requests/s, Python load generator (random users, 64 in flight)",
        "bare grpc.aio server, constant response",
        target="",
        note="no target: the Python client takes most of a core of the two",
    )
    alternate(figure, run.runs, python_get_user(run, memstore_target), python_get_user(run, bare_target))
    return figure


def measure_stream(run: Run, target: str) -> Figure:
    """The whole table through ListUsersChunked, read and parsed by a Python client, against a raw scan."""
    figure = Figure(
        "ListUsersChunked users/s, whole table, chunks of 1000, read and parsed by a Python client",
        "raw psycopg2 keyset scan rows/s (pages of 1000, fetchall), in-process",
        target=">= 1.0",
    )
    for _ in range(run.runs):
        rate, count = stream_users(target, CHUNK)
        if count < run.users:
            raise RuntimeError(f"streamed {count} of {run.users} users")
        figure.values.append(rate)
        figure.baselines.append(raw_scan(run.url))
    return figure


def measure_paging(run: Run, target: str) -> list[Figure]:
    """The last page (and first chunk) of the table against the first: keyset pages cost the same."""
    page = Figure(
        "ListUsers page of 1000 at the end of the table, ms", "the same page at the start", target="<= 1.5"
    )
    chunk = Figure(
        "first ListUsersChunked message at the end of the table, ms", "the same at the start", target="<= 1.5"
    )
    last_start = run.users - CHUNK
    for _ in range(run.runs):
        page.values.append(page_seconds(target, last_start) * 1000)
        page.baselines.append(page_seconds(target, 0) * 1000)
        chunk.values.append(first_chunk_seconds(target, last_start) * 1000)
        chunk.baselines.append(first_chunk_seconds(target, 0) * 1000)
    return [page, chunk]


def measure_workers(run: Run, one_target: str, bare_target: str) -> list[Figure]:
    """GetUser on ``--workers 2`` and ``--workers 4`` against the single-process server already up
    at ``one_target``, and two bare servers against one: what two processes can add on this
    machine at all."""
    figure = Figure(
        f"GetUser requests/s, 2 server processes (--workers 2), h2load ({WORKERS_SHAPE}, one user)",
        "1 process (the same, without --workers)",
        target=">= 1.6",
    )
    ceiling = Figure(
        f"bare grpc.aio server, 2 processes sharing the port, h2load ({WORKERS_SHAPE})",
        "1 bare process",
        target="",
        note="no target: the most a second process adds on this machine, whatever it serves; "
        "one grpc.aio process already keeps more than one core busy (gRPC's own threads run "
        "outside the interpreter lock)",
    )
    four = Figure(
        f"GetUser requests/s, 4 server processes (--workers 4), h2load ({WORKERS_SHAPE}, one user)",
        "1 process (the same, without --workers)",
        target="",
        note=f"no target: 4 processes on {os.cpu_count()} cores shared with PostgreSQL and h2load",
    )
    for workers, measured in ((2, figure), (4, four)):
        many_target = local_target()
        with memstore(run, many_target, f"memstore-workers-{workers}", "--workers", str(workers)):
            alternate(
                measured,
                run.runs,
                h2load_get_user(run, many_target, WORKERS_SHAPE),
                h2load_get_user(run, one_target, WORKERS_SHAPE),
            )
    shared_target = local_target()
    sharing = baseline_command(shared_target, share_port=True)
    with (
        server_process(sharing, shared_target, run.work / "bare-a.log") as first,
        server_process(sharing, shared_target, run.work / "bare-b.log") as second,
    ):
        if first.poll() is not None or second.poll() is not None:
            raise RuntimeError("a bare server sharing the port did not start: see bare-a.log, bare-b.log")
        alternate(
            ceiling,
            run.runs,
            h2load_get_user(run, shared_target, WORKERS_SHAPE),
            h2load_get_user(run, bare_target, WORKERS_SHAPE),
        )
    return [figure, four, ceiling]


def postgres_cpu_seconds(pgdata: Path) -> float:
    """CPU seconds used so far by the PostgreSQL of ``pgdata``: its postmaster and every child
    (backends included, which memstore's pool keeps for the whole run), from /proc."""
    postmaster = int((pgdata / "postmaster.pid").read_text().split()[0])
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                # Fields after the command (which may hold spaces): state, ppid, ... utime, stime.
                stats[int(entry.name)] = (entry / "stat").read_text().rpartition(")")[2].split()
    family, tick = {postmaster}, os.sysconf("SC_CLK_TCK")
    for pid, fields in stats.items():
        if int(fields[1]) == postmaster:
            family.add(pid)
    return sum(int(stats[pid][11]) + int(stats[pid][12]) for pid in family if pid in stats) / tick


def streamed_with_cpu(target: str, pgdata: Path, users: int) -> tuple[float, float]:
    """Users/s of one whole-table stream from ``target``, and the primary's CPU (%) meanwhile."""
    cpu_before, started = postgres_cpu_seconds(pgdata), time.perf_counter()
    rate, count = stream_users(target, CHUNK)
    cpu = (postgres_cpu_seconds(pgdata) - cpu_before) / (time.perf_counter() - started) * 100
    if count < users:
        raise RuntimeError(f"streamed {count} of {users} users")
    return rate, cpu


def replica_caught_up(primary_url: str, replica_url: str, seconds: float = 600) -> None:
    """Wait until the replica has replayed all the primary had written when called."""
    with contextlib.closing(psycopg2.connect(primary_url)) as primary, primary.cursor() as cur:
        cur.execute("SELECT pg_current_wal_lsn()::text")
        (target,) = cur.fetchone() or ("0/0",)
    deadline = time.monotonic() + seconds
    with contextlib.closing(psycopg2.connect(replica_url)) as replica:
        replica.autocommit = True
        while time.monotonic() < deadline:
            with replica.cursor() as cur:
                cur.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,))
                row = cur.fetchone()
                if row and row[0]:
                    return
            time.sleep(0.2)
    raise RuntimeError("the replica did not catch up")


def measure_replica_stream(run: Run, primary_target: str, pgdata: Path) -> list[Figure]:
    """A whole-table stream served by a streaming replica against one served by the primary,
    and the primary's PostgreSQL CPU during each (the replica is a pg_basebackup of it)."""
    sys.path.insert(0, str(BENCH.parent))  # the test suite's primary/replica helper
    from tests import postgres_cluster

    stream = Figure(
        "ListUsersChunked users/s, whole table, served by a streaming replica (--read-database-url)",
        "the same served by the primary",
        target="",
        note="no target: the replica shares the machine's cores with the primary, server and client",
    )
    cpu = Figure(
        "primary PostgreSQL CPU % during a whole-table stream served by the replica",
        "during the same stream served by the primary",
        target="<= 0.2",
    )
    params = psycopg2.extensions.parse_dsn(run.url)
    source = f"host={params['host']} port={params.get('port', '5432')} user={params.get('user', 'postgres')}"
    log("making a streaming replica (pg_basebackup)")
    replica = postgres_cluster.replica(run.work / "replica", "bench-replica", source, statement_counts=False)
    try:
        replica_url = replica.url(params["dbname"])
        replica_caught_up(run.url, replica_url)
        replica_target = local_target()
        with memstore(run, replica_target, "memstore-replica", "--read-database-url", replica_url):
            for number in range(run.runs):
                pair = [
                    (replica_target, stream.values, cpu.values),
                    (primary_target, stream.baselines, cpu.baselines),
                ]
                for target, rates, cpus in pair if number % 2 == 0 else pair[::-1]:
                    rate, used = streamed_with_cpu(target, pgdata, run.users)
                    rates.append(rate)
                    cpus.append(used)
    finally:
        replica.stop("fast")
    return [stream, cpu]


def measure_filters(run: Run, target: str) -> list[Figure]:
    """A ListUsers page filtered by a metadata equality that 1% of the users match, against the
    unfiltered page from the same cursors; CountUsers with that filter, against counting all."""
    page = Figure(
        f"ListUsers page of {query.PAGE} filtered by `{query.ONE_PERCENT}` (1% of the users), ms",
        "the unfiltered page from the same cursors",
        target="<= 3",
    )
    count = Figure(
        f"CountUsers `{query.ONE_PERCENT}` (1% of the users), ms",
        "CountUsers with no filter (every user)",
        target="",
        note="no target: the count of a rare filter is read from the GIN index; counting every user "
        "reads the whole table",
    )
    for number in range(run.runs):
        pair = [(query.ONE_PERCENT, page.values), ("", page.baselines)]
        for text, times in pair if number % 2 == 0 else pair[::-1]:
            times.append(query.page_ms(target, run.users, text))
        filtered_ms, matched = query.count_ms(target, query.ONE_PERCENT)
        if matched != run.users // 100:
            raise RuntimeError(f"{query.ONE_PERCENT!r} counted {matched} users, not {run.users // 100}")
        count.values.append(filtered_ms)
        count.baselines.append(query.count_ms(target, "", samples=3)[0])
    return [page, count]


def measure_batch(run: Run, target: str) -> Figure:
    """Users/s of BatchCreateUsers of 500 against CreateUser one call after another; it adds users."""
    figure = Figure(
        f"users/s created by BatchCreateUsers of {query.BATCH}, one call after another",
        f"CreateUser one by one ({query.BATCH} calls, each after the last answered)",
        target=">= 10",
    )
    for number in range(run.runs):
        batched = functools.partial(query.batched_per_second, target, f"batch{number}")
        one_by_one = functools.partial(query.one_by_one_per_second, target, f"single{number}")
        pair = [(batched, figure.values), (one_by_one, figure.baselines)]
        for measure_once, rates in pair if number % 2 == 0 else pair[::-1]:
            rates.append(measure_once())
    return figure


def measure_create(run: Run, target: str, get_user: Figure) -> Figure:
    """CreateUser against GetUser's Python-load figure; last, because it adds users to the table."""
    figure = Figure("CreateUser requests/s, Python load generator", "GetUser requests/s, the same", ">= 0.3")
    for number in range(run.runs):
        figure.add_value(
            run_load(target, CREATE_USER, CreateUserRequests(f"bench{number}"), seconds=run.seconds)
        )
    figure.baselines, figure.baseline_p99 = list(get_user.values), list(get_user.p99)
    return figure


def measure_feed(run: Run, target: str, pid: int) -> list[Figure]:
    """WatchUsers: event latency against CreateUser's round trip, one watcher against 8 writers,
    and the server's CPU with 100 idle watchers against none (bench/feed.py)."""
    latency = Figure(
        "WatchUsers event latency p50 (commit to watcher), ms", "CreateUser round trip p50, ms", "<= 3"
    )
    keeping_up = Figure(
        f"WatchUsers events/s received by one watcher, {feed.WRITERS} writers", "their creates/s", ">= 0.9"
    )
    idle = Figure(
        f"server CPU with {feed.IDLE_WATCHERS} idle watchers, % of one core", "with none", "value < 5"
    )
    for _ in range(run.runs):
        measured = asyncio.run(feed.latency(target, 300))
        latency.values.append(measured.event_p50_ms)
        latency.p99.append(measured.event_p99_ms)
        latency.baselines.append(measured.create_p50_ms)
        kept = asyncio.run(feed.keeping_up(target, run.seconds))
        keeping_up.values.append(kept.event_rate)
        keeping_up.baselines.append(kept.create_rate)
        cost = asyncio.run(feed.idle_cost(target, pid, run.seconds))
        idle.values.append(cost.watchers_core_share * 100)
        idle.baselines.append(max(cost.idle_core_share * 100, 0.01))
    latency.note = "p99 column: the event latency's p99; a watcher of grpc.aio in the bench's process"
    return [latency, keeping_up, idle]


def measure(run: Run) -> list[Figure]:
    """Every figure, on one single-process memstore and the bare server, both up throughout."""
    figures: list[Figure] = []
    one_target, bare_target = local_target(), local_target()
    bare = baseline_command(bare_target)
    with (
        memstore(run, one_target, "memstore") as server,
        server_process(bare, bare_target, run.work / "bare.log"),
    ):
        run_load(one_target, GET_USER, GetUserRequests(run.users), seconds=1, warmup=0.5)  # warm caches
        idle = rss_mb(server.pid)
        if have_h2load():
            figures.append(measure_h2load(run, one_target, bare_target))
        get_user = measure_python_load(run, one_target, bare_target)
        figures += [get_user, measure_stream(run, one_target)]
        rss = Figure("server RSS after streaming every user, MB", "idle, after warm-up", "< idle + 100 MB")
        rss.values, rss.baselines = [rss_mb(server.pid)], [idle]
        figures += [*measure_paging(run, one_target), rss]
        figures += measure_filters(run, one_target)
        figures += measure_replica_stream(run, one_target, run.work / "data" / "postgres")
        if have_h2load():
            figures += measure_workers(run, one_target, bare_target)
        figures += measure_cli(run, one_target)
        figures += measure_feed(run, one_target, server.pid)
        figures.append(measure_create(run, one_target, get_user))
        figures.append(measure_batch(run, one_target))
    return figures


# --------------------------------------------------------------------------- the report


def render(figures: list[Figure], run: Run, command: str) -> str:
    lines = [
        "# memstore benchmarks",
        "",
        f"- command: `{command}` (`make bench`; `make bench-quick` for a short run)",
        f"- when: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}; machine: {os.cpu_count()} cores, "
        "shared by the server, PostgreSQL (embedded) and the load generators",
        f"- data: {run.users:,} users with small metadata objects; load runs of {run.seconds:g} s after "
        f"1 s of warm-up; every figure is the median of {run.runs} runs, [min-max]",
        "- server: `memstore-server serve` with its default configuration and `--metrics-listen`",
        "- load: h2load (nghttp2-client), one thread, and closed-loop Python grpc.aio clients in "
        "processes of their own"
        + ("" if have_h2load() else " (h2load was not installed: its figures are missing)"),
        "",
        "| figure | value | p99 ms | baseline (same run) | baseline value | baseline p99 ms | ratio | target "
        "| met |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [_row(figure) for figure in figures]
    notes = [f"- {figure.name}: {figure.note}" for figure in figures if figure.note]
    return "\n".join([*lines, "", *notes, NOTES])


def _row(figure: Figure) -> str:
    p99 = spread(figure.p99) if figure.p99 else "-"
    baseline_p99 = spread(figure.baseline_p99) if figure.baseline_p99 else "-"
    met = "-" if not figure.target else ("yes" if figure.met else "**no**")
    return (
        f"| {figure.name} | {spread(figure.values)} | {p99} | {figure.baseline_name} | "
        f"{spread(figure.baselines)} | {baseline_p99} | {figure.ratio:.2f} | {figure.target or '-'} | {met} |"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--users", type=int, default=None, help="users to load (default 1,000,000)")
    parser.add_argument("--seconds", type=float, default=None, help="length of each load run (default 5)")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (at least 3)")
    parser.add_argument("--quick", action="store_true", help="100,000 users and 2 s load runs")
    parser.add_argument("--write", type=Path, help="also write the results as Markdown to this file")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if not have_h2load():
        log("h2load not found: the h2load figures are skipped (Debian: apt-get install nghttp2-client)")
    work = Path(tempfile.mkdtemp(prefix="memstore-bench-"))
    postgres = EmbeddedPostgres(work / "data")
    try:
        url = postgres.start()
        run = Run(
            url=url,
            users=args.users or (100_000 if args.quick else 1_000_000),
            seconds=args.seconds or (2.0 if args.quick else 5.0),
            runs=max(3, args.runs),
            work=work,
        )
        db = open_database(url, pool_size=4, pool_timeout=10)
        migrate(db)
        load_users(db, run.users)
        db.close_all()
        figures = measure(run)
    finally:
        postgres.stop()
        shutil.rmtree(work, ignore_errors=True)
    report = render(figures, run, " ".join(["bench/run.py", *(sys.argv[1:] if argv is None else argv)]))
    print(report)
    if args.write:
        args.write.write_text(report + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
