"""A real PgBouncer in transaction pooling mode in front of a test PostgreSQL.

Debian's ``pgbouncer`` package is used; when it is missing, it is installed
here with apt-get (as root, which the test machines and CI are). Where that
cannot be done, ``installed`` says why and the tests that need it are
skipped with that message. PgBouncer refuses to run as root, so it runs as
the same unprivileged OS user as the test servers (tests/postgres_cluster.py).
It is a child process of the tests, stopped by its own pid.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg2.extensions

from tests.postgres_cluster import as_server_user, free_port, prepare_for_os_user

_APT_TIMEOUT = 600
_CANDIDATES = ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer")


def _find() -> str | None:
    found = shutil.which("pgbouncer")
    if found:
        return found
    return next((path for path in _CANDIDATES if os.access(path, os.X_OK)), None)


def _apt_get(*args: str) -> bool:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = ["apt-get", "-q", "-y", "-o", "DPkg::Lock::Timeout=300", *args]
    try:
        result = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=_APT_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def installed() -> tuple[str | None, str]:
    """The pgbouncer binary, installing Debian's package when it is missing and can be; else
    None and the reason, for a skip message."""
    found = _find()
    if found:
        return found, ""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None, (
            "pgbouncer is not installed, and installing it needs root and apt-get "
            "(Debian/Ubuntu: apt-get install pgbouncer)"
        )
    if not _apt_get("install", "--no-install-recommends", "pgbouncer"):
        _apt_get("update")
        _apt_get("install", "--no-install-recommends", "pgbouncer")
    found = _find()
    if found:
        return found, ""
    return None, "pgbouncer is not installed and apt-get install pgbouncer failed (no package source?)"


@dataclass(frozen=True)
class Bouncer:
    host: str
    port: int
    folder: Path

    def url(self, server_url: str) -> str:
        """``server_url`` (URL or key=value) going through this PgBouncer instead, as a URL."""
        params = psycopg2.extensions.parse_dsn(server_url)
        params.update(host=self.host, port=str(self.port))
        dsn: str = psycopg2.extensions.make_dsn(**params)
        return dsn

    def stats(self) -> dict[str, int]:
        """Transactions PgBouncer carried, by database (its SHOW STATS)."""
        conn = psycopg2.connect(host=self.host, port=self.port, user="postgres", dbname="pgbouncer")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SHOW STATS")
                assert cur.description is not None
                columns = [column.name for column in cur.description]
                return {
                    row[columns.index("database")]: int(row[columns.index("total_xact_count")])
                    for row in cur.fetchall()
                }
        finally:
            conn.close()


def _server_address(server_url: str) -> tuple[str, str, str]:
    params = psycopg2.extensions.parse_dsn(server_url)
    host = params.get("host") or "/var/run/postgresql"
    return host, params.get("port") or "5432", params.get("user") or "postgres"


@contextlib.contextmanager
def running(binary: str, server_url: str, folder: Path) -> Iterator[Bouncer]:
    """PgBouncer (transaction pooling) in front of the server of ``server_url``, any database."""
    folder.mkdir(parents=True, exist_ok=True)
    prepare_for_os_user(folder)
    host, port, user = _server_address(server_url)
    listen = free_port()
    (folder / "users.txt").write_text(f'"{user}" ""\n')
    (folder / "pgbouncer.ini").write_text(
        "\n".join(
            [
                "[databases]",
                f"* = host={host} port={port} user={user}",
                "[pgbouncer]",
                "listen_addr = 127.0.0.1",
                f"listen_port = {listen}",
                "unix_socket_dir =",
                "auth_type = trust",
                f"auth_file = {folder / 'users.txt'}",
                f"admin_users = {user}",
                "pool_mode = transaction",
                "max_client_conn = 2000",
                "default_pool_size = 20",
                "ignore_startup_parameters = extra_float_digits",
                f"logfile = {folder / 'pgbouncer.log'}",
                "",
            ]
        )
    )
    for name in ("users.txt", "pgbouncer.ini"):
        (folder / name).chmod(0o644)
    with (folder / "pgbouncer.err").open("wb") as errors:
        process = subprocess.Popen(
            as_server_user([binary, str(folder / "pgbouncer.ini")]),
            stdout=subprocess.DEVNULL,
            stderr=errors,
            stdin=subprocess.DEVNULL,
        )
    try:
        _wait_for_port("127.0.0.1", listen, process, folder)
        yield Bouncer("127.0.0.1", listen, folder)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # PgBouncer's immediate shutdown
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def _wait_for_port(host: str, port: int, process: subprocess.Popen[bytes], folder: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = (folder / "pgbouncer.err").read_text(errors="replace")
            raise RuntimeError(f"pgbouncer exited with {process.returncode}:\n{log}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError("pgbouncer did not listen within 20s")
