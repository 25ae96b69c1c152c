"""Which way from grpc.aio to PostgreSQL is fastest here? Measure the candidates side by side.

memstore serves on grpc.aio, and its database calls must not block the event loop.
This script compares the ways of getting there on the shortest possible code, so
that the figures are the database path's cost and nothing of memstore's stack:
each path is a minimal grpc.aio server of its own (below, in this file) answering
GetUser (``SELECT id, message FROM users WHERE user_id = $1``, the stored message
framed as GetUserResponse field 1) and a ListUsersChunked of stored bytes (keyset
pages of 1000). The paths:

(a) psycopg2 on a server-side PREPAREd statement per connection, each query run
    through a bounded ThreadPoolExecutor with ``loop.run_in_executor``: a thread is
    taken only while a query runs;
(b) Peewee's own asyncio layer, ``playhouse.pwasyncio.AsyncPostgresqlDatabase``
    (asyncpg driven under greenlets): ``async with db:``, then ``db.aexecute_sql``;
(c) as (a), but point reads arriving while a batch query runs wait and then go
    together as one ``WHERE user_id = ANY(...)`` query: one batch in flight, at most
    256 ids in it. memstore's server reads this way.

Every server runs in its own process, all on one embedded-PostgreSQL table the
script fills, beside the bare grpc.aio server of baseline_server.py, so GetUser is
also given as a ratio to what grpc.aio alone reaches in the same run. GetUser is
driven by h2load (4 connections x 16 streams, one user id: h2load sends one
body); streams are read and parsed by one Python client. The runs are interleaved,
each round starting with a different server, so drift on a shared machine hits
them all alike; figures are medians of the runs, [min-max].

    .venv/bin/python bench/db_paths.py              # 100,000 users, 5 s runs, 3 runs (about 2 minutes)
    .venv/bin/python bench/db_paths.py --seconds 10 --runs 5
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import grpc
import grpc.aio
import psycopg2
import psycopg2.extensions
from baseline_server import USER_SERVICE, bare_server, sample_user, until_signalled
from framing import int_field, length_delimited, repeated
from harness import (
    baseline_command,
    check_get_user,
    local_target,
    log,
    server_process,
    spread,
)
from load import Shape, have_h2load, run_h2load, stream_users
from memstore.v1 import users_pb2
from memstore_server.embedded import EmbeddedPostgres
from playhouse.pwasyncio import AsyncPostgresqlDatabase

GET_USER_METHOD = f"/{USER_SERVICE}/GetUser"
SHAPE = Shape(connections=4, streams=16)
PAGE = 1000
# Ids in one coalesced query: past a few hundred, the query's own cost grows and nothing is saved.
MAX_BATCH = 256
# Database threads (a, c) and pooled connections (b): enough to keep PostgreSQL busy on a
# couple of cores; more only makes the threads fight over the GIL.
DB_CONNECTIONS = 8
FILL_BATCH = 10_000

GET_USER_SQL = "SELECT id, message FROM users WHERE user_id = %s"
GET_USERS_SQL = "SELECT user_id, message FROM users WHERE user_id = ANY(%s)"
PAGE_SQL = "SELECT id, message FROM users WHERE id > %s ORDER BY id LIMIT %s"
PREPARES = (
    "PREPARE get_user(text) AS SELECT id, message FROM users WHERE user_id = $1",
    "PREPARE get_users(text[]) AS SELECT user_id, message FROM users WHERE user_id = ANY($1)",
    "PREPARE users_page(bigint, int) AS SELECT id, message FROM users WHERE id > $1 ORDER BY id LIMIT $2",
)

Page = list[tuple[int, bytes]]


@dataclass(frozen=True)
class DbPath:
    """One database path: its key on the command line and its line in the table."""

    key: str
    title: str


BARE = DbPath("bare", "bare grpc.aio, constant response (baseline)")
PATHS = (
    DbPath("threads", "(a) psycopg2, PREPAREd, ThreadPoolExecutor"),
    DbPath("pwasyncio", "(b) Peewee pwasyncio (asyncpg + greenlet)"),
    DbPath("coalesced", "(c) psycopg2 + executor, coalesced point reads"),
)


# --------------------------------------------------------------------------- the paths


class Reads(Protocol):
    """What a minimal server needs of its database path."""

    async def get(self, user_id: str) -> bytes | None: ...

    async def page(self, after: int, limit: int) -> Page: ...

    async def close(self) -> None: ...


class Statements:
    """One psycopg2 connection per executor thread, its statements PREPAREd once when opened.

    Autocommit, so a read is one round trip: psycopg2 would otherwise send a BEGIN
    first and leave the connection idle in a transaction.
    """

    def __init__(self, url: str) -> None:
        self._url = url
        self._local = threading.local()
        self._opened: list[psycopg2.extensions.connection] = []
        self._lock = threading.Lock()

    def _cursor(self) -> psycopg2.extensions.cursor:
        cursor: psycopg2.extensions.cursor | None = getattr(self._local, "cursor", None)
        if cursor is None:
            connection = psycopg2.connect(self._url)
            connection.autocommit = True
            cursor = connection.cursor()
            for statement in PREPARES:
                cursor.execute(statement)
            self._local.cursor = cursor
            with self._lock:
                self._opened.append(connection)
        return cursor

    def get_user(self, user_id: str) -> bytes | None:
        cursor = self._cursor()
        cursor.execute("EXECUTE get_user(%s)", (user_id,))
        row = cursor.fetchone()
        return None if row is None else bytes(row[1])

    def get_users(self, user_ids: list[str]) -> dict[str, bytes]:
        cursor = self._cursor()
        cursor.execute("EXECUTE get_users(%s)", (user_ids,))
        return {user_id: bytes(message) for user_id, message in cursor.fetchall()}

    def page(self, after: int, limit: int) -> Page:
        cursor = self._cursor()
        cursor.execute("EXECUTE users_page(%s, %s)", (after, limit))
        return [(user_id, bytes(message)) for user_id, message in cursor.fetchall()]

    def close(self) -> None:
        with self._lock:
            for connection in self._opened:
                connection.close()
            self._opened.clear()


class ThreadedReads:
    """(a): every query on a thread of a bounded pool, the event loop free meanwhile."""

    def __init__(self, url: str) -> None:
        self._statements = Statements(url)
        self._executor = ThreadPoolExecutor(max_workers=DB_CONNECTIONS, thread_name_prefix="db")

    async def get(self, user_id: str) -> bytes | None:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._statements.get_user, user_id)

    async def get_many(self, user_ids: list[str]) -> dict[str, bytes]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._statements.get_users, user_ids)

    async def page(self, after: int, limit: int) -> Page:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._statements.page, after, limit)

    async def close(self) -> None:
        self._executor.shutdown(wait=True)
        self._statements.close()


class Coalescer:
    """Point reads that arrive while a batch query runs wait for the next one, and share it.

    One batch is in flight at a time; when it returns, the ids that queued
    meanwhile (up to MAX_BATCH) go out together. A lone read goes out at once.
    Reads of one id in one batch share its row.
    """

    def __init__(self, fetch_many: Callable[[list[str]], Awaitable[dict[str, bytes]]]) -> None:
        self._fetch_many = fetch_many
        self._waiting: dict[str, list[asyncio.Future[bytes | None]]] = {}
        self._in_flight: asyncio.Future[dict[str, bytes]] | None = None

    async def get(self, user_id: str) -> bytes | None:
        future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(user_id, []).append(future)
        if self._in_flight is None:
            self._launch()
        return await future

    def _launch(self) -> None:
        user_ids = list(itertools.islice(self._waiting, MAX_BATCH))
        batch = {user_id: self._waiting.pop(user_id) for user_id in user_ids}
        self._in_flight = asyncio.ensure_future(self._fetch_many(user_ids))
        self._in_flight.add_done_callback(partial(self._deliver, batch))

    def _deliver(
        self, batch: dict[str, list[asyncio.Future[bytes | None]]], done: asyncio.Future[dict[str, bytes]]
    ) -> None:
        self._in_flight = None
        error = done.exception() if not done.cancelled() else asyncio.CancelledError()
        found = done.result() if error is None else {}
        for user_id, futures in batch.items():
            for future in futures:
                if future.done():  # its caller gave up
                    continue
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(found.get(user_id))
        if self._waiting:
            self._launch()


class CoalescedReads(ThreadedReads):
    """(c): (a), with point reads coalesced into ANY(...) queries; pages as in (a)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._coalescer = Coalescer(self.get_many)

    async def get(self, user_id: str) -> bytes | None:
        return await self._coalescer.get(user_id)


class PeeweeReads:
    """(b): Peewee's asyncio database; a pooled asyncpg connection held only inside ``async with``."""

    def __init__(self, url: str) -> None:
        self._db: Any = AsyncPostgresqlDatabase(url, pool_size=DB_CONNECTIONS)

    async def get(self, user_id: str) -> bytes | None:
        async with self._db:
            cursor = await self._db.aexecute_sql(GET_USER_SQL, (user_id,))
            row = cursor.fetchone()
        return None if row is None else bytes(row[1])

    async def page(self, after: int, limit: int) -> Page:
        async with self._db:
            cursor = await self._db.aexecute_sql(PAGE_SQL, (after, limit))
            rows = cursor.fetchall()
        return [(row[0], row[1]) for row in rows]

    async def close(self) -> None:
        await self._db.close_pool()


READS: dict[str, Callable[[str], Reads]] = {
    "threads": ThreadedReads,
    "pwasyncio": PeeweeReads,
    "coalesced": CoalescedReads,
}


# --------------------------------------------------------------------------- the minimal server


class UserHandlers:
    """GetUser and ListUsersChunked over one database path, answering with stored bytes."""

    def __init__(self, reads: Reads) -> None:
        self._reads = reads

    async def get_user(
        self, request: users_pb2.GetUserRequest, context: grpc.aio.ServicerContext[Any, bytes]
    ) -> bytes:
        message = await self._reads.get(request.user_id)
        if message is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no user {request.user_id!r}")
        return length_delimited(1, message)

    async def list_users_chunked(
        self, request: users_pb2.ListUsersChunkedRequest, context: grpc.aio.ServicerContext[Any, bytes]
    ) -> AsyncIterator[bytes]:
        """Keyset pages; ``next_cursor`` 0 on a short (so final) page, as the real service ends."""
        size = min(request.chunk_size or 100, PAGE)
        after = request.cursor
        while rows := await self._reads.page(after, size):
            after = rows[-1][0]
            final = len(rows) < size
            yield repeated(1, (message for _, message in rows)) + int_field(2, 0 if final else after)
            if final:
                return

    def generic(self) -> grpc.GenericRpcHandler[Any, Any]:
        """Requests parsed by the generated classes, responses sent as the bytes built here."""
        return grpc.method_handlers_generic_handler(
            USER_SERVICE,
            {
                "GetUser": grpc.unary_unary_rpc_method_handler(
                    self.get_user, request_deserializer=users_pb2.GetUserRequest.FromString
                ),
                "ListUsersChunked": grpc.unary_stream_rpc_method_handler(
                    self.list_users_chunked,
                    request_deserializer=users_pb2.ListUsersChunkedRequest.FromString,
                ),
            },
        )


async def serve(path: str, listen: str, url: str) -> None:
    """One path's server, in a process of its own, until the bench sends SIGTERM."""
    reads = READS[path](url)
    server = bare_server(listen, UserHandlers(reads).generic())
    await server.start()
    await until_signalled()
    await server.stop(1)
    await reads.close()


# --------------------------------------------------------------------------- the data


def fill(url: str, users: int) -> None:
    """``users`` rows of id, user_id and the stored User message, as memstore keeps them.

    The table is the bench's own, not memstore's schema, so the comparison does not
    move when memstore's migrations do; the messages are the same users run.py loads.
    """
    connection = psycopg2.connect(url)
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute(
                "CREATE TABLE users "
                "(id bigint PRIMARY KEY, user_id text NOT NULL UNIQUE, message bytea NOT NULL)"
            )
            for first in range(1, users + 1, FILL_BATCH):
                numbers = range(first, min(users, first + FILL_BATCH - 1) + 1)
                cursor.execute(
                    "INSERT INTO users SELECT * FROM unnest(%s::bigint[], %s::text[], %s::bytea[])",
                    (
                        list(numbers),
                        [f"user-{number}" for number in numbers],
                        [sample_user(number).SerializeToString(deterministic=True) for number in numbers],
                    ),
                )
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE users")
    finally:
        connection.close()


# --------------------------------------------------------------------------- measuring


@dataclass
class Results:
    """One path's figures over the runs."""

    rates: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    errors: int = 0
    stream_rates: list[float] = field(default_factory=list)


def server_command(path: str, target: str, url: str) -> list[str]:
    return [
        sys.executable,
        str(Path(__file__).resolve()),
        "serve",
        path,
        "--listen",
        target,
        "--database-url",
        url,
    ]


def measure(url: str, args: argparse.Namespace, work: Path) -> dict[str, Results]:
    """Every server up at once; GetUser rounds and then stream rounds, each round in a new order."""
    targets = {BARE.key: local_target(), **{path.key: local_target() for path in PATHS}}
    results = {key: Results() for key in targets}
    with ExitStack() as servers:
        servers.enter_context(
            server_process(baseline_command(targets[BARE.key]), targets[BARE.key], work / "bare.log")
        )
        for path in PATHS:
            target = targets[path.key]
            command = server_command(path.key, target, url)
            servers.enter_context(server_process(command, target, work / f"{path.key}.log"))
            check_get_user(target, "user-1")
        log(f"servers up: {targets}")
        if have_h2load():
            measure_get_user(targets, results, args, work)
        else:
            log("h2load not found (Debian: apt-get install nghttp2-client): GetUser not measured")
        measure_streams(targets, results, args)
    return results


def rounds(keys: Sequence[str], runs: int) -> list[list[str]]:
    """``runs`` orders of ``keys``, each starting one further along, so no key always goes first."""
    return [[*keys[run % len(keys) :], *keys[: run % len(keys)]] for run in range(runs)]


def measure_get_user(
    targets: dict[str, str], results: dict[str, Results], args: argparse.Namespace, work: Path
) -> None:
    request = length_delimited(1, b"user-1")
    for number, order in enumerate(rounds(list(targets), args.runs), 1):
        for key in order:
            result = run_h2load(
                targets[key], GET_USER_METHOD, request, seconds=args.seconds, shape=SHAPE, folder=work
            )
            results[key].rates.append(result.requests_per_second)
            results[key].p99_ms.append(result.p99_ms)
            results[key].errors += result.errors
            log(f"round {number} {key:>10} GetUser: {result.requests_per_second:,.0f} req/s")


def measure_streams(targets: dict[str, str], results: dict[str, Results], args: argparse.Namespace) -> None:
    keys = [path.key for path in PATHS]
    for key in keys:  # untimed: fills PostgreSQL's buffers and every pool
        stream_users(targets[key], PAGE)
    for number, order in enumerate(rounds(keys, args.runs), 1):
        for key in order:
            rate, count = stream_users(targets[key], PAGE)
            if count != args.users:
                raise RuntimeError(f"{key}: streamed {count} users of {args.users}")
            results[key].stream_rates.append(rate)
            log(f"round {number} {key:>10} ListUsersChunked: {rate:,.0f} users/s")


# --------------------------------------------------------------------------- the report


def table(results: dict[str, Results], args: argparse.Namespace) -> str:
    """The comparison as a Markdown table, every figure median [min-max] of the runs."""
    bare = results[BARE.key].rates
    lines = [
        f"database paths: {args.users:,} users; GetUser under h2load ({SHAPE}, one user id), "
        f"{args.seconds:g} s after 1 s of warm-up; streams of {PAGE} users per message read and "
        f"parsed by one Python client; {args.runs} runs, median [min-max]",
        "",
        "| path | GetUser req/s | ratio to bare | p99 ms | stream users/s |",
        "|---|---|---|---|---|",
    ]
    for path in (BARE, *PATHS):
        figures = results[path.key]
        ratio = f"{statistics.median(figures.rates) / statistics.median(bare):.2f}" if bare else "-"
        rate = spread(figures.rates, "{:,.0f}") if figures.rates else "-"
        p99 = spread(figures.p99_ms, "{:.1f}") if figures.p99_ms else "-"
        stream = spread(figures.stream_rates, "{:,.0f}") if figures.stream_rates else "-"
        lines.append(f"| {path.title} | {rate} | {ratio} | {p99} | {stream} |")
    failed = {key: figures.errors for key, figures in results.items() if figures.errors}
    if failed:
        lines += ["", f"failed or errored requests under h2load: {failed}"]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--users", type=int, default=100_000, help="users to load (default %(default)s)")
    parser.add_argument("--seconds", type=float, default=5.0, help="each GetUser run (default %(default)s)")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (default %(default)s)")
    args = parser.parse_args(argv)
    if args.users < PAGE or args.seconds <= 0 or args.runs < 1:
        parser.error(f"--users must be at least {PAGE}; --seconds and --runs positive")
    return args


def serve_main(argv: Sequence[str]) -> None:
    """``db_paths.py serve PATH --listen HOST:PORT --database-url URL``: how measure() starts a server."""
    parser = argparse.ArgumentParser(prog="db_paths.py serve")
    parser.add_argument("path", choices=sorted(READS))
    parser.add_argument("--listen", required=True)
    parser.add_argument("--database-url", required=True)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.path, args.listen, args.database_url))


def main(argv: Sequence[str] | None = None) -> None:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["serve"]:
        serve_main(arguments[1:])
        return
    args = parse_args(arguments)
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="memstore-db-paths-"))
    postgres = EmbeddedPostgres(work / "data")
    try:
        url = postgres.start()
        fill(url, args.users)
        log(f"loaded {args.users:,} users")
        results = measure(url, args, work)
    finally:
        postgres.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(table(results, args))
    log(f"done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
