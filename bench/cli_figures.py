"""The memstore command's figures: export against the stream it reads, import against CreateUser.

- ``memstore export`` (JSONL, and Parquet) users/s against ListUsersChunked users/s read and
  parsed by a Python client (load.stream_users, the figure of run.py), the same table, the runs
  alternated;
- ``memstore import`` of that export into an empty database users/s against CreateUser called
  one by one (each call waiting for the previous) by the Python client, on the same server.

The command runs as a user runs it (a subprocess, its output a file); its figure is the time it
reports itself, from connecting to the file and manifest written, so the interpreter's start-up
(about half a second) is left out. ``make bench`` includes these figures; alone:

    .venv/bin/python bench/cli_figures.py --users 100000
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg2
import psycopg2.extensions
from harness import local_target, log
from load import stream_users
from memstore_client import CreateUserRequest, MemstoreClient

if TYPE_CHECKING:  # run.py imports this module: its types only, at run time it is imported lazily
    from run import Figure, Run

CHUNK = 1000
MEMSTORE = Path(sys.executable).with_name("memstore")
# Users created one by one for the CreateUser baseline, or fewer if its time runs out.
ONE_BY_ONE_MAX = 5000
_REPORTED = re.compile(r"(?:exported|imported) ([\d,]+) users.* in ([\d.]+)s")


def command_rate(args: Sequence[str]) -> tuple[float, int]:
    """Users/s and users of one ``memstore`` command, from the time it reports."""
    result = subprocess.run([str(MEMSTORE), *args], capture_output=True, text=True, timeout=3600, check=False)
    match = _REPORTED.search(result.stderr)
    if result.returncode != 0 or match is None:
        raise RuntimeError(f"memstore {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    count, seconds = int(match.group(1).replace(",", "")), float(match.group(2))
    return count / seconds, count


def export_rate(target: str, out: Path, format_name: str) -> tuple[float, int]:
    return command_rate(["export", "--format", format_name, "--out", str(out), "--address", target])


def client_stream_rate(target: str) -> float:
    """Users/s of the Python client's own stream of every user (list_chunked: User objects)."""
    with MemstoreClient(target) as client:
        started, count = time.perf_counter(), 0
        for users in client.user.list_chunked(chunk_size=CHUNK):
            count += len(users)
        return count / (time.perf_counter() - started)


def one_by_one_rate(target: str, prefix: str, seconds: float) -> float:
    """CreateUser/s of one client calling it in a loop, each call after the previous one returned."""
    with MemstoreClient(target) as client:
        client.user.add(CreateUserRequest(user_id=f"{prefix}-warm"))
        started, count = time.perf_counter(), 0
        while count < ONE_BY_ONE_MAX and time.perf_counter() - started < seconds:
            client.user.add(
                CreateUserRequest(
                    user_id=f"{prefix}-{count}",
                    email=f"{prefix}-{count}@example.com",
                    first_name="First",
                    last_name="Last",
                    metadata={"plan": "pro", "n": count, "tags": ["a", "b"]},
                )
            )
            count += 1
        return count / (time.perf_counter() - started)


def empty_database(url: str, name: str) -> str:
    """A new database ``name`` beside the one of ``url``; its URL."""
    params = psycopg2.extensions.parse_dsn(url)
    admin = psycopg2.connect(url)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        cur.execute(f'CREATE DATABASE "{name}"')
    admin.close()
    params["dbname"] = name
    dsn: str = psycopg2.extensions.make_dsn(**params)
    return dsn


def truncate(url: str) -> None:
    with psycopg2.connect(url) as connection, connection.cursor() as cur:
        cur.execute("TRUNCATE sessions, users")
    connection.close()


def measure_cli(run: Run, target: str) -> list[Figure]:
    """The command's figures against the memstore at ``target`` (holding ``run.users`` users)."""
    import run as bench

    export = bench.Figure(
        "memstore export users/s, JSONL to a file, whole table (time the command reports)",
        "ListUsersChunked users/s, read and parsed by a Python client",
        target=">= 0.8",
        note="each user's line is stored beside it (json_line, m0011) and read by PostgreSQL, 4 windows "
        "at once (ExportUsers); the command only writes what arrives",
    )
    export_parquet = bench.Figure(
        "memstore export users/s, Parquet to a file, whole table (time the command reports)",
        "ListUsersChunked users/s, read and parsed by a Python client",
        target="",
        note="no target: Parquet's figure beside JSONL's; its columns are built in Python from "
        "ListUsersChunked's users",
    )
    against_client = bench.Figure(
        "memstore export users/s, JSONL to a file, whole table (time the command reports)",
        "the Python client's list_chunked users/s (User objects, metadata as dicts)",
        target="",
        note="no target: what a Python pipeline reading the stream through memstore-client gets "
        "(turning each user into Python objects costs several microseconds, most of it the metadata "
        "Struct); the export's lines are PostgreSQL's, and the command only writes them",
    )
    imported = bench.Figure(
        "memstore import users/s of that JSONL export into an empty database (--batch-size 500, 4 in flight)",
        "CreateUser users/s, called one by one by the Python client, same server",
        target=">= 10",
    )
    folder = Path(tempfile.mkdtemp(prefix="memstore-cli-bench-", dir=run.work))
    jsonl, parquet_file = folder / "users.jsonl", folder / "users.parquet"
    for number in range(run.runs):
        pairs = [("value", export), ("baseline", export)]
        for kind, _ in pairs if number % 2 == 0 else pairs[::-1]:
            if kind == "value":
                rate, count = export_rate(target, jsonl, "jsonl")
                if count < run.users:
                    raise RuntimeError(f"exported {count} of {run.users} users")
                export.values.append(rate)
                against_client.values.append(rate)
                export_parquet.values.append(export_rate(target, parquet_file, "parquet")[0])
            else:
                rate, _ = stream_users(target, CHUNK)
                export.baselines.append(rate)
                export_parquet.baselines.append(rate)
                against_client.baselines.append(client_stream_rate(target))
    log(f"export: {export.ratio:.2f} of the stream")

    import_url = empty_database(run.url, "memstore_import_bench")
    import_target = local_target()
    with bench.memstore_on(run, import_url, import_target, "memstore-import"):
        for number in range(run.runs):
            truncate(import_url)
            rate, count = command_rate(["import", str(jsonl), "--address", import_target])
            if count < run.users:
                raise RuntimeError(f"imported {count} of {run.users} users")
            imported.values.append(rate)
            imported.baselines.append(one_by_one_rate(import_target, f"one-{number}", run.seconds))
    log(f"import: {imported.ratio:.1f}x CreateUser one by one")
    shutil.rmtree(folder, ignore_errors=True)
    return [export, export_parquet, against_client, imported]


def main(argv: Sequence[str] | None = None) -> None:
    import run as bench
    from memstore_server.database import open_database
    from memstore_server.embedded import EmbeddedPostgres
    from memstore_server.migrations import migrate

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--users", type=int, default=100_000, help="users to load (default 100,000)")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of the CreateUser baseline runs")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (at least 3)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="memstore-bench-"))
    postgres = EmbeddedPostgres(work / "data")
    try:
        url = postgres.start()
        run = bench.Run(url=url, users=args.users, seconds=args.seconds, runs=max(3, args.runs), work=work)
        db = open_database(url, pool_size=4, pool_timeout=10)
        migrate(db)
        bench.load_users(db, run.users)
        db.close_all()
        target = local_target()
        with bench.memstore(run, target, "memstore"):
            figures = measure_cli(run, target)
    finally:
        postgres.stop()
        shutil.rmtree(work, ignore_errors=True)
    command = " ".join(["bench/cli_figures.py", *(sys.argv[1:] if argv is None else argv)])
    print(bench.render(figures, run, command))


if __name__ == "__main__":
    main()
